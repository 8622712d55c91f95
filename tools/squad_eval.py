#!/usr/bin/env python3
"""Evaluates a topserve question-answering model on SQuAD v1.1 through the Answer RPC.

Sends every question of the dev set (or the first --limit) to a running topserve-server, then prints
exact match and F1 with the official SQuAD v1.1 normalisation (lower-case, strip punctuation, drop
the articles a/an/the, collapse whitespace; the best score over the gold answers, averaged over
questions), plus the mean FLOPs fraction and latency.

  .venv/bin/python tools/squad_eval.py --server localhost:8500 --limit 500 --budget 0.5
  .venv/bin/python tools/squad_eval.py --data ../shared/data/squad/dev-v1.1.json --json out.json
"""

import argparse
import collections
import concurrent.futures
import json
import os
import re
import string
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import client  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                            "data", "squad", "dev-v1.1.json")


def normalize_answer(text):
    """The SQuAD v1.1 normalisation."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction, truth):
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1(prediction, truth):
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def best_over(metric, prediction, truths):
    return max(metric(prediction, t) for t in truths)


def load_questions(path, limit=None):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)["data"]
    out = []
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                out.append({"id": qa["id"], "question": qa["question"],
                            "context": paragraph["context"],
                            "answers": [a["text"] for a in qa["answers"]]})
                if limit is not None and len(out) >= limit:
                    return out
    return out


def evaluate(predictions, questions):
    em = f = 0.0
    for q in questions:
        pred = predictions.get(q["id"], "")
        em += best_over(exact_match, pred, q["answers"])
        f += best_over(f1, pred, q["answers"])
    n = max(1, len(questions))
    return 100.0 * em / n, 100.0 * f / n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-s", "--server", default="localhost:8500")
    p.add_argument("--data", default=DEFAULT_DATA, help="SQuAD v1.1 JSON (%(default)s)")
    p.add_argument("--limit", type=int, help="evaluate the first N questions only")
    p.add_argument("-m", "--model", default="", help="model name (default: the first QA model)")
    p.add_argument("-b", "--budget", type=float, help="FLOPs budget per window")
    p.add_argument("--max-length", type=int, default=0, help="tokens per window (default 384)")
    p.add_argument("--doc-stride", type=int, help="tokens shared by windows (default 128)")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds")
    p.add_argument("--json", help="also write the results (metrics and predictions) here")
    p.add_argument("--stub-dir", help="where to generate the gRPC stubs")
    args = p.parse_args(argv)

    pb, grpc_pb = client.load_stubs(args.stub_dir)
    questions = load_questions(args.data, args.limit)
    channel = grpc.insecure_channel(args.server)
    stub = grpc_pb.InferenceStub(channel)

    def ask(q):
        req = pb.AnswerRequest(model=args.model, question=q["question"], context=q["context"],
                               max_length=args.max_length)
        if args.budget is not None:
            req.budget = args.budget
        if args.doc_stride is not None:
            req.doc_stride = args.doc_stride
        start = time.perf_counter()
        resp = stub.Answer(req, timeout=args.timeout)
        return q["id"], resp, time.perf_counter() - start

    predictions, fractions, latencies, errors = {}, [], [], collections.Counter()
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        for fut in concurrent.futures.as_completed([pool.submit(ask, q) for q in questions]):
            try:
                qid, resp, seconds = fut.result()
            except grpc.RpcError as e:
                errors[e.code().name] += 1
                continue
            predictions[qid] = resp.answer.text
            fractions.append(resp.flops_fraction)
            latencies.append(seconds)
    wall = time.perf_counter() - started
    em, f1_score = evaluate(predictions, questions)
    latencies.sort()
    result = {
        "questions": len(questions),
        "answered": len(predictions),
        "errors": dict(errors),
        "exact_match": em,
        "f1": f1_score,
        "mean_flops_fraction": sum(fractions) / len(fractions) if fractions else None,
        "latency_p50_seconds": latencies[len(latencies) // 2] if latencies else None,
        "wall_seconds": wall,
        "budget": args.budget,
    }
    print(f"questions {result['questions']}  answered {result['answered']}  "
          f"errors {sum(errors.values())}")
    print(f"exact_match {em:.2f}  f1 {f1_score:.2f}")
    if fractions:
        print(f"mean flops_fraction {result['mean_flops_fraction']:.3f}  "
              f"p50 latency {1000 * result['latency_p50_seconds']:.1f} ms  wall {wall:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**result, "predictions": predictions}, f, indent=1)
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
