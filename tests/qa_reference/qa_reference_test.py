#!/usr/bin/env python3
"""topserve's question answering against an independent Hugging Face reference.

Starts the real topserve-server (Release build) on the tiny golden QA model
(../shared/data/golden/tiny-qa) and the shipped SST-2 model (models/sst2-small), then checks:

  AnswerTest     the Answer RPC (text, code-point and byte span, score, window, n-best order, window
                 count and the context each window covers) against hf_qa_reference.py (transformers'
                 BertTokenizerFast windows, BertForQuestionAnswering in float64, the post-processing
                 of transformers' question-answering example) on SQuAD v1.1 dev questions, unpruned
                 (budget 1), with max_length 64/128/384 so contexts span several windows.
  LogitsTest     the engine's per-window QA logits and window token ids (server_engine_ref,
                 budget 1) against transformers on the same windows; the shipped SST-2 model's
                 classification logits through the Classify RPC against
                 BertForSequenceClassification (float64).

Tolerance: 1e-4 absolute on every score and logit (fp32 engine vs float64 transformers).

  .venv/bin/python tests/qa_reference/qa_reference_test.py --server build/server/topserve-server \
      --engine-ref build/tests/server_engine_ref --work /tmp/qa-ref [AnswerTest|LogitsTest ...]
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import unittest

import grpc
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import hf_qa_reference  # noqa: E402

# The generated gRPC stubs only (tools/client.py's load_stubs); the reference itself uses no
# topserve code.
sys.path.insert(0, os.path.join(ROOT, "tools"))
import client  # noqa: E402

TOL = 1e-4
ARGS = None
pb = grpc_pb = None

# (max_length, doc_stride, max_answer_tokens, n_best, how many questions). Small windows make
# SQuAD contexts (about 150 word pieces on average) span several windows.
SETTINGS = [
    (128, 32, 30, 5, 30),
    (64, 16, 30, 5, 20),
    (128, 64, 4, 5, 10),    # a short answer cap, so the length rule decides
    (384, 128, 30, 3, 10),  # the server's defaults: one window, two for the longest contexts
    (64, 40, 30, 20, 10),   # windows sharing most of their tokens, a long n-best: the same span
                            # found in two windows must appear once
]


_CASES = _REFERENCE = None


def reference():
    """The QaReference of --model (loaded once)."""
    global _REFERENCE
    if _REFERENCE is None:
        _REFERENCE = hf_qa_reference.QaReference(ARGS.model)
    return _REFERENCE


def squad_cases():
    """(settings, question, context) for every SETTINGS row, deterministically spread over the
    dev set: the first question of paragraphs taken in a fixed stride, longest contexts included
    for the 384-token row. Questions of more than 30 word pieces are skipped (the reference, as
    transformers' example, never truncates the question; the server would past max_query_tokens),
    and so are those leaving a window no more context tokens than doc_stride (both sides refuse)."""
    global _CASES
    if _CASES is not None:
        return _CASES
    with open(ARGS.squad) as f:
        articles = json.load(f)["data"]
    paragraphs = [p for a in articles for p in a["paragraphs"]]
    tok = reference().tokenizer
    cases = []
    used = set()
    for row, (max_length, stride, max_answer, n_best, count) in enumerate(SETTINGS):
        if max_length == 384:
            order = sorted(range(len(paragraphs)), key=lambda i: -len(paragraphs[i]["context"]))
        else:
            order = list(range(row * 7, len(paragraphs), 37))
        taken = 0
        for i in order:
            if taken == count:
                break
            if i in used:
                continue
            p = paragraphs[i]
            q = p["qas"][0]["question"]
            q_tokens = len(tok(q, add_special_tokens=False)["input_ids"])
            if q_tokens > 30 or stride >= max_length - 3 - q_tokens:
                continue
            used.add(i)
            cases.append(({"max_length": max_length, "doc_stride": stride,
                           "max_answer_tokens": max_answer, "n_best": n_best}, q, p["context"]))
            taken += 1
    _CASES = cases
    return cases


class ServerProcess:
    """topserve-server in a subprocess; stderr collected by a thread."""

    def __init__(self, config):
        self.proc = subprocess.Popen([ARGS.server, "--config", config], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_listening(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(r"listening: .* port=(\d+)", line)
                if m:
                    return f"127.0.0.1:{m.group(1)}"
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("server did not start:\n" + "\n".join(self.lines))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not exit after SIGTERM")
        finally:
            self.reader.join(timeout=10)
            self.proc.stderr.close()


def start_server():
    config = os.path.join(ARGS.work, "qa_reference.yaml")
    with open(config, "w") as f:
        f.write(f"""
server:
  listen: 127.0.0.1:0
  metrics_port: -1
batching:
  workers: 1
  threads_per_worker: 1
  max_queue_delay_us: 200
limits:
  max_text_bytes: 20000
  max_tokens_per_call: 20000
models:
  - name: tiny-qa
    path: {ARGS.model}
  - name: sst2
    path: {ARGS.cls_model}
""")
    server = ServerProcess(config)
    address = server.wait_listening()
    channel = grpc.insecure_channel(address)
    deadline = time.monotonic() + 60
    while client.health_check(channel, "topserve.v1.Inference") != "SERVING":
        if time.monotonic() > deadline:
            raise AssertionError("models never became ready:\n" + "\n".join(server.lines))
        time.sleep(0.05)
    return server, channel


SERVER = CHANNEL = None  # one server for every test (setUpModule)


def setUpModule():
    global SERVER, CHANNEL
    SERVER, CHANNEL = start_server()


def tearDownModule():
    CHANNEL.close()
    code = SERVER.stop()
    assert code == 0, f"server exit code {code}:\n" + "\n".join(SERVER.lines)


def byte_offset(text, chars):
    return len(text[:chars].encode("utf-8"))


def compare_nbest(got, want, tol=TOL):
    """Differences between the server's n-best list `got` (AnswerSpan messages) and the
    reference's `want` (dicts, a few more than requested so near-ties can be located). Order must
    be the reference's; two entries may trade places only when their reference scores are within
    2 x tol (fp32 vs float64 cannot order them). Returns a list of strings (empty: equal) and the
    largest score difference seen."""
    problems, worst = [], 0.0
    for i, g in enumerate(got):
        match = [j for j, w in enumerate(want) if (w["start"], w["end"]) == (g.start, g.end)]
        if not match:
            problems.append(f"#{i} server span [{g.start},{g.end}) {g.text!r} score {g.score:.6f} "
                            f"is not in the reference's n-best; reference #{i}: "
                            + (describe(want[i]) if i < len(want) else "none"))
            continue
        j = match[0]
        w = want[j]
        diff = abs(g.score - w["score"])
        worst = max(worst, diff)
        if j != i and not (i < len(want) and abs(want[i]["score"] - w["score"]) <= 2 * tol):
            problems.append(f"#{i} server {g.text!r} [{g.start},{g.end}) is the reference's #{j} "
                            f"(reference #{i}: {describe(want[i]) if i < len(want) else 'none'})")
        if diff > tol:
            problems.append(f"#{i} {g.text!r}: score {g.score:.7f}, reference {w['score']:.7f}")
        if g.text != w["text"]:
            problems.append(f"#{i} text {g.text!r}, reference {w['text']!r}")
        if g.window != w["window"]:
            problems.append(f"#{i} {g.text!r}: window {g.window}, reference {w['window']}")
    return problems, worst


def describe(w):
    return f"{w['text']!r} [{w['start']},{w['end']}) score {w['score']:.6f} window {w['window']}"


class AnswerTest(unittest.TestCase):
    """Answer RPC vs the reference on SQuAD dev questions."""

    @classmethod
    def setUpClass(cls):
        cls.reference = reference()
        cls.stub = grpc_pb.InferenceStub(CHANNEL)

    def test_answers_equal_reference(self):
        cases = squad_cases()
        self.assertGreaterEqual(len(cases), 50)
        failures = []
        windows = multi = max_windows = spans = 0
        worst = 0.0
        for settings, question, context in cases:
            n_best = settings["n_best"]
            where = f"{settings} {question!r}"
            try:
                resp = self.stub.Answer(pb.AnswerRequest(
                    model="tiny-qa", question=question, context=context, budget=1.0,
                    max_length=settings["max_length"], doc_stride=settings["doc_stride"],
                    max_answer_tokens=settings["max_answer_tokens"], n_best=n_best), timeout=60)
            except grpc.RpcError as e:  # e.g. a span cut inside a UTF-8 character
                failures.append(f"{where}: Answer failed: {e.code()} {e.details()}")
                continue
            ref = self.reference.answer(question, context, settings["max_length"],
                                        settings["doc_stride"], settings["max_answer_tokens"],
                                        n_best + 5)
            # Windows: as many, each covering the same stretch of the context.
            ref_spans = []
            for win in ref["windows"]:
                offs = [o for o in win["offsets"] if o is not None]
                ref_spans.append((offs[0][0], offs[-1][1]))
            got_spans = [(w.context_start, w.context_end) for w in resp.windows]
            if got_spans != ref_spans:
                failures.append(f"{where}: windows {got_spans}, reference {ref_spans}")
                continue
            for w in resp.windows:
                if w.report.budget_used != 1.0 or any(k != w.report.tokens_in
                                                      for k in w.report.tokens_kept):
                    failures.append(f"{where}: window pruned {list(w.report.tokens_kept)}")
            windows += len(ref_spans)
            multi += len(ref_spans) > 1
            max_windows = max(max_windows, len(ref_spans))
            # Byte offsets and code-point offsets name the same text.
            raw = context.encode("utf-8")
            for a in resp.n_best:
                if (context[a.start:a.end] != a.text
                        or raw[a.byte_start:a.byte_end].decode("utf-8") != a.text
                        or a.byte_start != byte_offset(context, a.start)):
                    failures.append(f"{where}: span fields disagree: {a}")
            if not resp.n_best or resp.answer != resp.n_best[0]:
                failures.append(f"{where}: answer is not n_best[0]")
            problems, diff = compare_nbest(list(resp.n_best), ref["answers"][:n_best + 5])
            if len(resp.n_best) != min(n_best, len(ref["answers"])):
                problems.append(f"{len(resp.n_best)} answers, reference "
                                f"{min(n_best, len(ref['answers']))}")
            worst = max(worst, diff)
            spans += len(resp.n_best)
            if problems:
                # fp32 vs float64 can reorder logits closer than the tolerance: say how close the
                # 20th and 21st were, so a near-tie at the candidate cut is told from a real bug.
                gap = min((np.sort(x)[::-1][hf_qa_reference.N_BEST_SIZE - 1]
                           - np.sort(x)[::-1][hf_qa_reference.N_BEST_SIZE]
                           for x in ref["start_logits"] + ref["end_logits"]
                           if len(x) > hf_qa_reference.N_BEST_SIZE), default=float("inf"))
                problems[0] += f" (smallest gap between a window's 20th and 21st logit: {gap:.1e})"
            failures += [f"{where}: {p}" for p in problems]
        print(f"\nAnswerTest: {len(cases)} questions, {windows} windows ({multi} questions with "
              f"several, at most {max_windows}), {spans} n-best spans compared, max |score - "
              f"reference| {worst:.2e}", file=sys.stderr)
        self.assertGreaterEqual(multi, 30, "too few questions span several windows")
        if failures:
            self.fail(f"{len(failures)} differences from the reference:\n"
                      + "\n".join(failures[:40]))


class LogitsTest(unittest.TestCase):
    """The engine's raw outputs vs transformers, unpruned."""

    def test_qa_logits_equal_transformers(self):
        ref = reference()
        cases = squad_cases()[::3]
        requests = [{"model": ARGS.model, "question": q, "context": c, "budget": 1.0,
                     "max_length": s["max_length"], "doc_stride": s["doc_stride"],
                     "max_query_tokens": 64, "logits": True} for s, q, c in cases]
        proc = subprocess.run([ARGS.engine_ref], input="".join(json.dumps(r) + "\n"
                                                               for r in requests),
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        results = [json.loads(line) for line in proc.stdout.splitlines()]
        self.assertEqual(len(results), len(cases))
        worst, windows = 0.0, 0
        for (s, q, c), got in zip(cases, results):
            hf_windows = hf_qa_reference.make_windows(ref.tokenizer, q, c, s["max_length"],
                                                      s["doc_stride"])
            self.assertEqual([w["ids"] for w in got["windows"]],
                             [w["input_ids"] for w in hf_windows], q)
            self.assertEqual([w["type_ids"] for w in got["windows"]],
                             [w["token_type_ids"] for w in hf_windows], q)
            starts, ends = ref.logits(hf_windows)
            for w, hs, he in zip(got["windows"], starts, ends):
                worst = max(worst, float(np.max(np.abs(np.array(w["start_logits"]) - hs))),
                            float(np.max(np.abs(np.array(w["end_logits"]) - he))))
                windows += 1
        print(f"\nQA logits: {windows} windows of {len(cases)} questions, max |engine - "
              f"transformers| {worst:.2e}", file=sys.stderr)
        self.assertLessEqual(worst, TOL)

    def test_shipped_sst2_logits_equal_transformers(self):
        from transformers import BertForSequenceClassification, BertTokenizerFast
        tok = BertTokenizerFast.from_pretrained(ARGS.cls_model)
        model = BertForSequenceClassification.from_pretrained(
            ARGS.cls_model, torch_dtype=torch.float64).eval()
        with open(ARGS.sst2) as f:
            rows = [line.rstrip("\n").split("\t") for line in f][1:]
        texts = [r[0] for r in rows[:64]]
        stub = grpc_pb.InferenceStub(CHANNEL)
        got = []
        for i in range(0, len(texts), 8):
            resp = stub.Classify(pb.ClassifyRequest(
                model="sst2", inputs=[pb.TextInput(text=t) for t in texts[i:i + 8]],
                budget=1.0, return_logits=True), timeout=60)
            for r in resp.results:
                self.assertTrue(all(k == r.report.tokens_in for k in r.report.tokens_kept),
                                "pruned at budget 1")
                got.append(list(r.logits))
        worst = 0.0
        with torch.no_grad():
            for text, logits in zip(texts, got):
                enc = tok(text, truncation=True, max_length=model.config.max_position_embeddings,
                          return_tensors="pt")
                want = model(**enc).logits[0].numpy()
                worst = max(worst, float(np.max(np.abs(np.array(logits) - want))))
        print(f"\nSST-2 logits: {len(texts)} dev sentences, max |server - transformers| "
              f"{worst:.2e}", file=sys.stderr)
        self.assertEqual(len(got), len(texts))
        self.assertLessEqual(worst, TOL)


def main():
    global ARGS, pb, grpc_pb
    shared = os.path.join(ROOT, "..", "shared")
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--engine-ref", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--model", default=os.path.join(shared, "data", "golden", "tiny-qa"))
    p.add_argument("--cls-model", default=os.path.join(ROOT, "models", "sst2-small"))
    p.add_argument("--squad", default=os.path.join(shared, "data", "squad", "dev-v1.1.json"))
    p.add_argument("--sst2", default=os.path.join(shared, "data", "sst2", "dev.tsv"))
    ARGS, rest = p.parse_known_args()
    for name in ("model", "cls_model", "squad", "sst2"):
        setattr(ARGS, name, os.path.abspath(getattr(ARGS, name)))
    os.makedirs(ARGS.work, exist_ok=True)
    torch.set_num_threads(1)
    pb, grpc_pb = client.load_stubs(os.path.join(ARGS.work, "stubs"))
    unittest.main(argv=[sys.argv[0], "-v", *rest])


if __name__ == "__main__":
    main()
