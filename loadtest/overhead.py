#!/usr/bin/env python3
"""Server overhead at low load: sequential unary Classify calls (one text each) against a running
topserve-server; per call, client-observed latency minus the engine compute time the response
reports (so: gRPC + serialisation + tokenisation + queueing + planning). Loopback only.

Client-side figures include this Python client's own cost (protobuf in Python, the grpcio stack):
`getmodel_p50_ms` times GetModel, a call with no engine work, as that floor. With --metrics-port the
server's own view comes from its histograms (scraped before and after): the mean of
topserve_request_duration_seconds minus topserve_compute_duration_seconds over these calls, i.e.
what the server adds to the engine's compute, without the client.

  .venv/bin/python loadtest/overhead.py --server 127.0.0.1:8500 --model sst2 --calls 300 \
      --metrics-port 9100
"""

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import client  # noqa: E402

TEXTS = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés .",
         "it 's a charming and often affecting journey .", "unflinchingly bleak and desperate"]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--server", default="127.0.0.1:8500")
    p.add_argument("--model", default="")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--metrics-port", type=int, default=0, help="the server's metrics port (0: skip)")
    args = p.parse_args()
    host = args.server.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        sys.exit("overhead.py only targets loopback addresses")
    pb, grpc_pb = client.load_stubs()
    stub = grpc_pb.InferenceStub(grpc.insecure_channel(args.server))
    # The model the calls go to (an empty name means the server's first classification model): the
    # metrics filter and the GetModel floor need its name.
    if not args.model:
        args.model = next(m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models
                          if m.task == pb.MODEL_TASK_CLASSIFICATION)
    def sums():
        """(request seconds, compute seconds, calls) of Classify on args.model, from /metrics."""
        text = urllib.request.urlopen(f"http://{host}:{args.metrics_port}/metrics",
                                      timeout=5).read().decode()
        want = {"topserve_request_duration_seconds_sum": 0, "topserve_compute_duration_seconds_sum": 1,
                "topserve_request_duration_seconds_count": 2}
        out = [0.0, 0.0, 0.0]
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if name in want and 'method="Classify"' in rest and f'model="{args.model}"' in rest:
                out[want[name]] = float(line.rsplit(" ", 1)[1])
        return out

    latency, overhead, queue, before = [], [], [], None
    for i in range(args.calls + 20):
        if i == 20 and args.metrics_port:
            before = sums()
        req = pb.ClassifyRequest(model=args.model, budget=args.budget,
                                 inputs=[pb.TextInput(text=TEXTS[i % len(TEXTS)])])
        t0 = time.perf_counter()
        resp = stub.Classify(req, timeout=10)
        took = time.perf_counter() - t0
        if i < 20:
            continue  # warm-up
        r = resp.results[0]
        latency.append(took)
        overhead.append(took - r.compute_seconds)
        queue.append(r.queue_seconds)
    ms = lambda v: round(1e3 * v, 3)  # noqa: E731
    q = lambda v, f: sorted(v)[int(f * (len(v) - 1))]  # noqa: E731
    result = {"calls": args.calls, "latency_p50_ms": ms(statistics.median(latency)),
              "overhead_p50_ms": ms(statistics.median(overhead)),
              "overhead_p90_ms": ms(q(overhead, 0.9)),
              "queue_p50_ms": ms(statistics.median(queue))}
    if before is not None:
        after = sums()
        calls = after[2] - before[2]
        result["server_overhead_mean_ms"] = ms(((after[0] - before[0]) - (after[1] - before[1])) / calls)
    floor = []
    for i in range(args.calls + 20):
        t0 = time.perf_counter()
        stub.GetModel(pb.GetModelRequest(name=args.model), timeout=10)
        if i >= 20:
            floor.append(time.perf_counter() - t0)
    result["getmodel_p50_ms"] = ms(statistics.median(floor))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
