#!/usr/bin/python3
"""Server overhead at low load: sequential unary Classify calls (one text each) against a running
topserve-server; per call, client-observed latency minus the engine compute time the response
reports (so: gRPC + serialisation + tokenisation + queueing + planning). Loopback only.

  /usr/bin/python3 loadtest/overhead.py --server 127.0.0.1:8500 --model sst2 --calls 300
"""

import argparse
import json
import os
import statistics
import sys
import time

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
    args = p.parse_args()
    host = args.server.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        sys.exit("overhead.py only targets loopback addresses")
    pb, grpc_pb = client.load_stubs()
    stub = grpc_pb.InferenceStub(grpc.insecure_channel(args.server))
    latency, overhead, queue = [], [], []
    for i in range(args.calls + 20):
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
    print(json.dumps({"calls": args.calls, "latency_p50_ms": ms(statistics.median(latency)),
                      "overhead_p50_ms": ms(statistics.median(overhead)),
                      "overhead_p90_ms": ms(q(overhead, 0.9)),
                      "queue_p50_ms": ms(statistics.median(queue))}))


if __name__ == "__main__":
    main()
