#!/usr/bin/env python3
"""Evaluates a topserve classification model on SST-2 dev (text<TAB>label) through the Classify RPC.

Sends every sentence (in calls of --batch inputs) to a running topserve-server at one budget and
prints accuracy (the predicted label's id is the argmax of the returned logits; gold labels are
0 = negative, 1 = positive), the mean FLOPs fraction the server reports, and the logits, if --json.

  .venv/bin/python tools/sst2_eval.py --server localhost:8500 --budget 0.5
  .venv/bin/python tools/sst2_eval.py --data ../shared/data/sst2/dev.tsv --json out.json
"""

import argparse
import concurrent.futures
import json
import os
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import client  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                            "data", "sst2", "dev.tsv")


def load(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        next(f)  # header: sentence<TAB>label
        for line in f:
            line = line.rstrip("\n")
            if line:
                text, label = line.rsplit("\t", 1)
                rows.append((text, int(label)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-s", "--server", default="localhost:8500")
    p.add_argument("--data", default=DEFAULT_DATA, help="text<TAB>label TSV (%(default)s)")
    p.add_argument("-m", "--model", default="", help="model name (default: the server's first)")
    p.add_argument("-b", "--budget", type=float, help="FLOPs budget (default: the model's)")
    p.add_argument("--batch", type=int, default=32, help="inputs per call")
    p.add_argument("--concurrency", type=int, default=2, help="calls in flight")
    p.add_argument("--json", help="also write accuracy and per-sentence logits here")
    p.add_argument("--stub-dir", help="where to generate the gRPC stubs")
    args = p.parse_args(argv)

    pb, grpc_pb = client.load_stubs(args.stub_dir)
    rows = load(args.data)
    channel = grpc.insecure_channel(args.server, options=[("grpc.enable_http_proxy", 0)])
    stub = grpc_pb.InferenceStub(channel)

    def call(start):
        chunk = rows[start:start + args.batch]
        req = pb.ClassifyRequest(model=args.model, inputs=[pb.TextInput(text=t) for t, _ in chunk],
                                 return_logits=True)
        if args.budget is not None:
            req.budget = args.budget
        for attempt in range(20):
            try:
                return start, stub.Classify(req, timeout=120)
            except grpc.RpcError as e:
                # Admission control refuses what would wait too long: back off and retry.
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))

    logits = [None] * len(rows)
    fractions = []
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        for fut in [pool.submit(call, s) for s in range(0, len(rows), args.batch)]:
            start, resp = fut.result()
            for i, r in enumerate(resp.results):
                logits[start + i] = list(r.logits)
                fractions.append(r.report.flops_fraction)
    correct = sum(1 for (_, y), z in zip(rows, logits) if max(range(len(z)), key=z.__getitem__) == y)
    result = {"sentences": len(rows), "accuracy": correct / len(rows), "budget": args.budget,
              "mean_flops_fraction": sum(fractions) / len(fractions)}
    print(f"SST-2: {len(rows)} sentences, accuracy {100 * result['accuracy']:.2f}%, "
          f"mean FLOPs fraction {result['mean_flops_fraction']:.3f} (budget {args.budget})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(result, logits=logits), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
