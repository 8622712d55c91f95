#!/usr/bin/env python3
"""End-to-end tests of topserve-server: the real binary on free loopback ports, tiny generated
models, called through the generated Python stubs, the C++ client and the Python tools.

  .venv/bin/python tests/e2e/server_e2e_test.py --server build/server/topserve-server \
      --client build/server/topserve-client --engine-ref build/tests/server_engine_ref \
      --cli build/tools/topserve-cli --work /tmp/e2e [ApiTest|DrainTest|StartupTest ...]

ApiTest     one server with four models: every RPC, results equal to the engine's, budgets, health
            transitions, reflection, every error code, deadlines, cancellation, metrics, clients.
DrainTest   SIGTERM with calls and a stream in flight; calls arriving during the drain.
TlsTest     TLS and mutual TLS on the gRPC port, plaintext refused.
StartupTest bad configs and corrupt models exit non-zero with one clear line.
"""

import argparse
import concurrent.futures
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import client  # noqa: E402

ARGS = None  # Parsed command line (set in main()).
pb = grpc_pb = None  # Generated stubs (set in main()).

LONG_TEXT = ("the quick brown fox jumps over the lazy dog while the band plays a slow and "
             "rather sad song about rivers , mountains and the people who live between them . ")
CONTEXT = ("Ada Lovelace, born in London in 1815, wrote the first published algorithm for "
           "Charles Babbage's Analytical Engine. Zoë and her café friends later visited 東京 "
           "to talk about it. ") * 6


# ---------------------------------------------------------------------------------------------
# Helpers.

def make_model(name, *gen_args):
    """A generated model directory under --work (reused when its arguments are unchanged)."""
    out = os.path.join(ARGS.work, "models", name)
    stamp = os.path.join(out, "gen_args.json")
    want = list(gen_args)
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == want:
                return out
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_model.py"), "--out", out,
                    "--vocab", ARGS.vocab, *gen_args], check=True, stdout=subprocess.DEVNULL)
    with open(stamp, "w") as f:
        json.dump(want, f)
    return out


def make_heavy_model():
    """4 layers, hidden 256: a 500-token sequence takes a few hundred ms on one thread."""
    return make_model("heavy", "--task", "cls", "--layers", "4", "--hidden", "256", "--heads",
                      "4", "--ffn", "1024", "--seed", "9")


def write_config(name, text):
    path = os.path.join(ARGS.work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class ServerProcess:
    """topserve-server in a subprocess; stderr is collected by a thread."""

    def __init__(self, config, *extra):
        self.proc = subprocess.Popen([ARGS.server, "--config", config, *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.port = self.metrics_port = None

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)  # EOF
            self.cond.notify_all()

    def wait_line(self, pattern, timeout=30):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if line is not None and re.search(pattern, line):
                        return line
                if None in self.lines:
                    raise AssertionError(f"server exited; stderr:\n{self.stderr()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r}; stderr:\n{self.stderr()}")
                self.cond.wait(left)

    def wait_listening(self):
        line = self.wait_line(r"listening: ")
        self.port = int(re.search(r" port=(\d+)", line).group(1))
        self.metrics_port = int(re.search(r"metrics_port=(-?\d+)", line).group(1))
        self.address = f"127.0.0.1:{self.port}"
        return self

    def stderr(self):
        with self.cond:
            return "\n".join(line for line in self.lines if line is not None)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not exit after SIGTERM")
        finally:
            self.close()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)
        self.proc.stderr.close()


def scrape(port):
    """Prometheus text format -> {(name, frozenset(labels)): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def metric(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def engine_reference(requests):
    """Runs server_engine_ref on JSON requests; returns its JSON results."""
    proc = subprocess.run([ARGS.engine_ref], input="".join(json.dumps(r) + "\n" for r in requests),
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_WAIT_POLICY": "passive"})
    if proc.returncode != 0:
        raise AssertionError(f"server_engine_ref failed: {proc.stderr}")
    return [json.loads(line) for line in proc.stdout.splitlines()]


def rpc_code(fn, *args, **kwargs):
    """Calls fn; returns (StatusCode, details) (OK, None) on success."""
    try:
        fn(*args, **kwargs)
        return grpc.StatusCode.OK, None
    except grpc.RpcError as e:
        return e.code(), e.details()


def raw_unary(channel, method, payload, timeout=5):
    call = channel.unary_unary(method, request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    return call(payload, timeout=timeout)


def reflection(channel, field, value):
    """One grpc.reflection.v1alpha request (field 4 file_containing_symbol, 7 list_services);
    returns the decoded response fields."""
    call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                 request_serializer=lambda b: b, response_deserializer=lambda b: b)
    responses = list(call(iter([client.length_delimited(field, value.encode())]), timeout=10))
    assert len(responses) == 1
    return client.parse_fields(responses[0])


# ---------------------------------------------------------------------------------------------

class ApiTest(unittest.TestCase):
    """One server, six models sharing one worker thread: sst2 (classification), squad (QA), capped
    (max_budget 0.5), slow (0.4 s queue delay, queue of 3), broken (every batch fails,
    --test-fail-model), heavy (bigger, to keep the worker busy). Tests run in order in one process;
    metrics checks use deltas so their order does not matter."""

    @classmethod
    def setUpClass(cls):
        cls.cls_dir = make_model("cls", "--preset", "tiny", "--task", "cls", "--seed", "5")
        cls.qa_dir = make_model("qa", "--preset", "tiny", "--task", "qa", "--seed", "6")
        cls.heavy_dir = make_heavy_model()
        config = write_config("api.yaml", f"""
server:
  listen: 127.0.0.1:0
  metrics_address: 127.0.0.1
  metrics_port: 0
  drain_grace_seconds: 5
batching:
  max_queue_delay_us: 1000
  workers: 1
  threads_per_worker: 1
limits:
  max_inputs_per_call: 8
  max_text_bytes: 2000
  max_tokens_per_call: 2000
  max_priority: 5
models:
  - name: sst2
    path: {cls.cls_dir}
  - name: squad
    path: {cls.qa_dir}
  - name: capped
    path: {cls.cls_dir}
    default_budget: 0.5
    max_budget: 0.5
  - name: slow
    path: {cls.cls_dir}
    batching:
      max_queue_delay_us: 400000
      max_queue_size: 3
  - name: broken
    path: {cls.cls_dir}
  - name: heavy
    path: {cls.heavy_dir}
  - name: sst2-int8
    path: {cls.cls_dir}
    precision: int8
""")
        cls.server = ServerProcess(config, "--test-ready-delay-ms", "1500",
                                   "--test-fail-model", "broken").wait_listening()
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.stub = grpc_pb.InferenceStub(cls.channel)
        # Health and calls while the models load (the test delay keeps them loading for 1.5 s).
        cls.early = {
            "live": client.health_check(cls.channel, ""),
            "sst2": client.health_check(cls.channel, "sst2"),
            "all": client.health_check(cls.channel, "topserve.v1.Inference"),
            "classify": rpc_code(cls.stub.Classify,
                                 pb.ClassifyRequest(inputs=[pb.TextInput(text="hi")]), timeout=5),
            "state": cls.stub.ListModels(pb.ListModelsRequest(), timeout=5).models[0].state,
        }
        deadline = time.monotonic() + 60
        while client.health_check(cls.channel, "topserve.v1.Inference") != "SERVING":
            if time.monotonic() > deadline:
                raise AssertionError("models never became ready:\n" + cls.server.stderr())
            time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        code = cls.server.stop()
        assert code == 0, f"exit code {code}\n{cls.server.stderr()}"

    def classify(self, texts, **kw):
        inputs = [pb.TextInput(text=t) if isinstance(t, str) else pb.TextInput(text=t[0],
                                                                               text_pair=t[1])
                  for t in texts]
        return self.stub.Classify(pb.ClassifyRequest(inputs=inputs, **kw), timeout=30)

    def assertCode(self, code, fn, *args, field=None, **kwargs):
        got, details = rpc_code(fn, *args, **kwargs)
        self.assertEqual(got, code, details)
        if field is not None:
            self.assertTrue(details.startswith(field + ":") or f" {field}:" in details or
                            details.startswith(field), details)
        return details

    # ---- health, reflection, model listing ----

    def test_health_transitions(self):
        self.assertEqual(self.early["live"], "SERVING")
        self.assertEqual(self.early["sst2"], "NOT_SERVING")
        self.assertEqual(self.early["all"], "NOT_SERVING")
        self.assertEqual(self.early["classify"][0], grpc.StatusCode.UNAVAILABLE)
        self.assertIn("loading", self.early["classify"][1])
        self.assertEqual(self.early["state"], pb.MODEL_STATE_LOADING)
        for name in ["", "sst2", "squad", "capped", "slow", "broken", "heavy", "sst2-int8",
                     "topserve.v1.Inference"]:
            self.assertEqual(client.health_check(self.channel, name), "SERVING", name)
        self.assertCode(grpc.StatusCode.NOT_FOUND, client.health_check, self.channel, "nope")

    def test_reflection(self):
        fields = reflection(self.channel, 7, "*")
        listing = [v for n, v in fields if n == 6][0]
        names = {dict(client.parse_fields(s))[1].decode()
                 for n, s in client.parse_fields(listing) if n == 1}
        self.assertIn("topserve.v1.Inference", names)
        self.assertIn("grpc.health.v1.Health", names)
        fields = reflection(self.channel, 4, "topserve.v1.Inference")
        files = [v for n, v in fields if n == 4][0]
        from google.protobuf import descriptor_pb2
        protos = [descriptor_pb2.FileDescriptorProto.FromString(v)
                  for n, v in client.parse_fields(files) if n == 1]
        service = [s for f in protos for s in f.service if s.name == "Inference"][0]
        self.assertEqual({m.name for m in service.method},
                         {"Classify", "ClassifyStream", "Answer", "ListModels", "GetModel"})

    def test_list_and_get_models(self):
        models = self.stub.ListModels(pb.ListModelsRequest(), timeout=5).models
        self.assertEqual([m.name for m in models],
                         ["sst2", "squad", "capped", "slow", "broken", "heavy", "sst2-int8"])
        for m in models:
            self.assertEqual(m.state, pb.MODEL_STATE_READY)
            self.assertEqual(m.num_layers, 4 if m.name == "heavy" else 2)
            self.assertEqual(len(m.schedule.keep_ratios), m.num_layers)
            self.assertIn(m.schedule.placement, ("after_mha", "between_layers"))
        sst2 = self.stub.GetModel(pb.GetModelRequest(name="sst2"), timeout=5)
        self.assertEqual(sst2.task, pb.MODEL_TASK_CLASSIFICATION)
        self.assertEqual(list(sst2.labels), ["negative", "positive"])
        self.assertEqual(sst2.max_length, 512)
        self.assertEqual(sst2.precision, "fp32")
        squad = self.stub.GetModel(pb.GetModelRequest(name="squad"), timeout=5)
        self.assertEqual(squad.task, pb.MODEL_TASK_QUESTION_ANSWERING)
        capped = self.stub.GetModel(pb.GetModelRequest(name="capped"), timeout=5)
        self.assertEqual((capped.default_budget, capped.max_budget), (0.5, 0.5))
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.stub.GetModel,
                        pb.GetModelRequest(name="nope"), timeout=5, field="name")
        self.assertCode(grpc.StatusCode.INVALID_ARGUMENT, self.stub.GetModel,
                        pb.GetModelRequest(), timeout=5, field="name")

    # ---- results equal the engine's, budgets honoured ----

    def test_classify_matches_engine(self):
        texts = ["a great movie", "dull , tedious and far too long", ("is it good ?", "yes"),
                 LONG_TEXT, "Zoë's café in 東京"]
        for budget in [1.0, 0.7, 0.4, 0.15]:
            resp = self.classify(texts, budget=budget, return_logits=True)
            refs = engine_reference([
                {"model": self.cls_dir, "budget": budget,
                 **({"text": t} if isinstance(t, str) else {"text": t[0], "pair": t[1]})}
                for t in texts])
            self.assertEqual(resp.model, "sst2")
            self.assertEqual(len(resp.results), len(texts))
            for r, ref in zip(resp.results, refs):
                self.assertEqual(len(r.logits), 2)
                for a, b in zip(r.logits, ref["logits"]):
                    self.assertAlmostEqual(a, b, delta=1e-4)
                rep = r.report
                self.assertEqual(rep.tokens_in, ref["tokens_in"])
                kept = ref["kept"] or [ref["tokens_in"]] * 2
                self.assertEqual(list(rep.tokens_kept), kept)
                self.assertEqual(rep.flops, 2 * ref["macs"])
                self.assertEqual(rep.unpruned_flops, 2 * ref["unpruned_macs"])
                self.assertEqual(rep.over_budget, ref["over_budget"])
                self.assertAlmostEqual(rep.flops_fraction, ref["macs"] / ref["unpruned_macs"])
                self.assertEqual(rep.budget_requested, budget)
                self.assertEqual(rep.budget_used, budget)
                self.assertTrue(rep.flops_fraction <= budget + 1e-12 or rep.over_budget)
                probs = dict(r.probabilities)
                self.assertAlmostEqual(sum(probs.values()), 1.0, places=5)
                best = max(probs, key=probs.get)
                self.assertEqual(r.label, best)
                self.assertAlmostEqual(r.score, probs[best], places=6)
                self.assertGreaterEqual(r.batch_size, 1)
                self.assertGreater(r.compute_seconds, 0)
                self.assertGreaterEqual(r.queue_seconds, 0)

    def test_classify_matches_cli_unpruned(self):
        texts = ["a great movie", LONG_TEXT]
        proc = subprocess.run([ARGS.cli, "--model", self.cls_dir, "--threads", "1", "classify",
                               *texts], capture_output=True, text=True, check=True,
                              env={**os.environ, "OMP_WAIT_POLICY": "passive"})
        cli = json.loads(proc.stdout)["results"]
        resp = self.classify(texts, return_logits=True)
        for r, c in zip(resp.results, cli):
            self.assertEqual(r.label, c["label"])
            for a, b in zip(r.logits, c["logits"]):
                self.assertAlmostEqual(a, b, delta=1e-4)
            self.assertEqual(r.report.tokens_in, c["tokens"])

    def test_int8_model(self):
        """precision: int8 serves the quantized engine: the same logits as the CLI's int8 run (per
        token quantization with exact integer sums does not depend on batching or threads), close
        to but not equal to fp32, with the same pruning report."""
        info = self.stub.GetModel(pb.GetModelRequest(name="sst2-int8"), timeout=5)
        self.assertEqual(info.precision, "int8")
        texts = ["a great movie", "dull , tedious and far too long", LONG_TEXT]
        proc = subprocess.run([ARGS.cli, "--model", self.cls_dir, "--threads", "1", "--precision",
                               "int8", "classify", *texts], capture_output=True, text=True,
                              check=True, env={**os.environ, "OMP_WAIT_POLICY": "passive"})
        cli = json.loads(proc.stdout)
        self.assertEqual(cli["precision"], "int8")
        q = self.stub.Classify(pb.ClassifyRequest(model="sst2-int8", return_logits=True, inputs=[
            pb.TextInput(text=t) for t in texts]), timeout=10)
        f = self.classify(texts, return_logits=True)
        moved = 0.0
        for rq, rf, c in zip(q.results, f.results, cli["results"]):
            for a, b in zip(rq.logits, c["logits"]):
                self.assertAlmostEqual(a, b, delta=1e-5)
            for a, b in zip(rq.logits, rf.logits):
                self.assertAlmostEqual(a, b, delta=0.1)
                moved = max(moved, abs(a - b))
            self.assertEqual(rq.report.flops, rf.report.flops)
        self.assertGreater(moved, 0.0, "int8 logits equal fp32 ones")

    def test_budgets_honoured(self):
        texts = [" ".join(["word"] * n) for n in (1, 5, 20, 60, 120)]
        for budget in [0.05, 0.2, 0.33, 0.5, 0.8, 0.95]:
            for r in self.classify(texts, budget=budget).results:
                rep = r.report
                self.assertTrue(rep.flops_fraction <= budget + 1e-12 or rep.over_budget,
                                (budget, rep))
                kept = list(rep.tokens_kept)
                self.assertEqual(kept, sorted(kept, reverse=True))
                self.assertLessEqual(kept[0], rep.tokens_in)
                if rep.over_budget:
                    self.assertEqual(kept[-1], 1)
        # The default budget of a capped model applies when the request sets none.
        r = self.classify(["some text here"], model="capped").results[0]
        self.assertEqual(r.report.budget_requested, 0.5)
        self.assertTrue(r.report.flops_fraction <= 0.5 or r.report.over_budget)

    def test_answer_matches_engine(self):
        question = "Who wrote the first algorithm?"
        for budget, max_length, stride in [(1.0, 0, None), (0.6, 64, 16), (0.3, 48, 8)]:
            req = pb.AnswerRequest(question=question, context=CONTEXT, n_best=3,
                                   max_length=max_length, budget=budget)
            if stride is not None:
                req.doc_stride = stride
            resp = self.stub.Answer(req, timeout=30)
            ref = engine_reference([{"model": self.qa_dir, "question": question,
                                     "context": CONTEXT, "budget": budget, "n_best": 3,
                                     "max_length": max_length or 384,
                                     "doc_stride": stride if stride is not None else 128}])[0]
            self.assertEqual(resp.model, "squad")
            self.assertEqual(len(resp.windows), len(ref["windows"]))
            if max_length:
                self.assertGreater(len(resp.windows), 1)
            for w, rw in zip(resp.windows, ref["windows"]):
                self.assertEqual(w.report.tokens_in, rw["tokens_in"])
                self.assertEqual(w.report.flops, 2 * rw["macs"])
                self.assertTrue(w.report.flops_fraction <= budget + 1e-12 or w.report.over_budget)
                self.assertLessEqual(w.context_start, w.context_end)
            self.assertEqual(resp.flops, sum(2 * w["macs"] for w in ref["windows"]))
            best, ref_best = resp.answer, ref["answers"][0]
            self.assertAlmostEqual(best.score, ref_best["score"], delta=1e-3)
            if len(ref["answers"]) < 2 or ref["answers"][0]["score"] - ref["answers"][1]["score"] > 1e-3:
                self.assertEqual((best.byte_start, best.byte_end),
                                 (ref_best["begin"], ref_best["end"]))
            self.assertLessEqual(len(resp.n_best), 3)
            self.assertEqual(resp.n_best[0], resp.answer)
            for span in resp.n_best:
                # Code-point offsets: Python slicing gives the answer text.
                self.assertEqual(CONTEXT[span.start:span.end], span.text)
                self.assertEqual(CONTEXT.encode()[span.byte_start:span.byte_end].decode(),
                                 span.text)

    def test_answer_code_points_non_ascii(self):
        context = "東京 café Zoë über naïve 東京 café Zoë"
        resp = self.stub.Answer(pb.AnswerRequest(question="where?", context=context, n_best=20),
                                timeout=30)
        self.assertGreater(len(resp.n_best), 1)
        for span in resp.n_best:
            self.assertEqual(context[span.start:span.end], span.text)

    def test_classify_stream(self):
        requests = []
        for i in range(12):
            text = "" if i == 5 else f"text number {i}"
            requests.append(pb.ClassifyStreamRequest(
                request_id=f"id-{i}",
                request=pb.ClassifyRequest(inputs=[pb.TextInput(text=text)], budget=0.5)))
        requests.append(pb.ClassifyStreamRequest(
            request_id="bad-model", request=pb.ClassifyRequest(model="nope",
                                                              inputs=[pb.TextInput(text="x")])))
        # Over the 256-byte limit, ending in 2-byte characters: the error echoes the first 256
        # bytes, cut at a character boundary (255 bytes here).
        long_id = "L" + "é" * 200
        requests.append(pb.ClassifyStreamRequest(
            request_id=long_id, request=pb.ClassifyRequest(inputs=[pb.TextInput(text="x")])))
        responses = list(self.stub.ClassifyStream(iter(requests), timeout=30))
        by_id = {r.request_id: r for r in responses}
        self.assertEqual(len(responses), len(requests))
        echoed = long_id.encode()[:255].decode()
        self.assertEqual(set(by_id), {r.request_id for r in requests[:-1]} | {echoed})
        self.assertEqual(by_id[echoed].error.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        self.assertIn("request_id", by_id[echoed].error.message)
        for i in range(12):
            r = by_id[f"id-{i}"]
            if i == 5:
                self.assertEqual(r.error.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])
                self.assertIn("inputs[0].text", r.error.message)
                self.assertFalse(r.HasField("response"))
            else:
                self.assertFalse(r.HasField("error"), r.error.message)
                self.assertEqual(len(r.response.results), 1)
                self.assertLessEqual(r.response.results[0].report.flops_fraction, 0.5 + 1e-12)
        self.assertEqual(by_id["bad-model"].error.code, grpc.StatusCode.NOT_FOUND.value[0])

    def test_stream_flow_control(self):
        # More requests than limits.max_stream_inflight (64), sent as fast as possible.
        requests = [pb.ClassifyStreamRequest(request_id=str(i),
                                             request=pb.ClassifyRequest(
                                                 inputs=[pb.TextInput(text=f"t {i}")]))
                    for i in range(150)]
        responses = list(self.stub.ClassifyStream(iter(requests), timeout=60))
        self.assertEqual(sorted(int(r.request_id) for r in responses), list(range(150)))
        self.assertTrue(all(not r.HasField("error") for r in responses))

    # ---- every error code ----

    def test_invalid_argument(self):
        IA = grpc.StatusCode.INVALID_ARGUMENT
        C = self.stub.Classify
        self.assertCode(IA, C, pb.ClassifyRequest(), field="inputs", timeout=5)
        self.assertCode(IA, C, pb.ClassifyRequest(inputs=[pb.TextInput(text="a")] * 9),
                        field="inputs", timeout=5)
        self.assertCode(IA, C, pb.ClassifyRequest(inputs=[pb.TextInput(text="a" * 2001)]),
                        field="inputs[0].text", timeout=5)
        self.assertCode(IA, C, pb.ClassifyRequest(inputs=[pb.TextInput(text="a"),
                                                          pb.TextInput(text="")]),
                        field="inputs[1].text", timeout=5)
        self.assertCode(IA, C, pb.ClassifyRequest(inputs=[pb.TextInput(text="a",
                                                                       text_pair="b" * 2001)]),
                        field="inputs[0].text_pair", timeout=5)
        for budget in (0.0, -1.0, 1.5, float("nan")):
            self.assertCode(IA, C, pb.ClassifyRequest(inputs=[pb.TextInput(text="a")],
                                                      budget=budget), field="budget", timeout=5)
        self.assertCode(IA, C, pb.ClassifyRequest(inputs=[pb.TextInput(text="a")], budget=0.5,
                                                  min_budget=0.7), field="min_budget", timeout=5)
        self.assertCode(IA, C, pb.ClassifyRequest(inputs=[pb.TextInput(text="a")], priority=6),
                        field="priority", timeout=5)
        self.assertCode(IA, C, pb.ClassifyRequest(inputs=[pb.TextInput(text="a")],
                                                  truncation=99), field="truncation", timeout=5)
        self.assertCode(IA, C, pb.ClassifyRequest(inputs=[pb.TextInput(text="a " * 600)],
                                                  truncation=pb.TRUNCATION_NONE),
                        field="inputs[0]", timeout=5)
        self.assertCode(IA, C, pb.ClassifyRequest(inputs=[pb.TextInput(text="a " * 600)],
                                                  truncation=pb.TRUNCATION_ONLY_SECOND),
                        field="inputs[0]", timeout=5)
        self.assertCode(IA, C, pb.ClassifyRequest(model="squad", inputs=[pb.TextInput(text="a")]),
                        field="model", timeout=5)
        A = self.stub.Answer
        self.assertCode(IA, A, pb.AnswerRequest(question="", context="c"), field="question",
                        timeout=5)
        self.assertCode(IA, A, pb.AnswerRequest(question="q", context=""), field="context",
                        timeout=5)
        self.assertCode(IA, A, pb.AnswerRequest(question="q", context="   "), field="context",
                        timeout=5)
        self.assertCode(IA, A, pb.AnswerRequest(question="q", context="c", max_length=4),
                        field="max_length", timeout=5)
        self.assertCode(IA, A, pb.AnswerRequest(question="q", context="c", max_length=1000),
                        field="max_length", timeout=5)
        self.assertCode(IA, A, pb.AnswerRequest(question="q", context="c", max_length=32,
                                                doc_stride=40), field="doc_stride", timeout=5)
        self.assertCode(IA, A, pb.AnswerRequest(question="q", context="c", n_best=101),
                        field="n_best", timeout=5)
        self.assertCode(IA, A, pb.AnswerRequest(question="q", context="c", max_answer_tokens=-1),
                        field="max_answer_tokens", timeout=5)
        self.assertCode(IA, A, pb.AnswerRequest(model="sst2", question="q", context="c"),
                        field="model", timeout=5)
        # Invalid UTF-8 in a string field: INVALID_ARGUMENT naming the field (test_malformed_bodies
        # has the rest).
        bad = client.length_delimited(2, client.length_delimited(1, b"\xff\xfe"))
        self.assertCode(IA, raw_unary, self.channel, "/topserve.v1.Inference/Classify", bad,
                        field="inputs[0].text")
        self.assertEqual(len(self.classify(["still alive"]).results), 1)

    def test_not_found(self):
        d = self.assertCode(grpc.StatusCode.NOT_FOUND, self.stub.Classify,
                            pb.ClassifyRequest(model="nope", inputs=[pb.TextInput(text="a")]),
                            field="model", timeout=5)
        self.assertIn("sst2", d)  # lists the models
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.stub.Answer,
                        pb.AnswerRequest(model="nope", question="q", context="c"), timeout=5)

    def test_resource_exhausted(self):
        RE = grpc.StatusCode.RESOURCE_EXHAUSTED
        self.assertCode(RE, self.stub.Classify,
                        pb.ClassifyRequest(model="capped", inputs=[pb.TextInput(text="a")],
                                           budget=0.9), field="budget", timeout=5)
        # 8 inputs of 302 tokens: over limits.max_tokens_per_call = 2000.
        d = self.assertCode(RE, self.stub.Classify,
                            pb.ClassifyRequest(inputs=[pb.TextInput(text="a " * 300)] * 8),
                            timeout=5)
        self.assertIn("max_tokens_per_call", d)
        self.assertCode(RE, self.stub.Answer,
                        pb.AnswerRequest(question="q", context="word " * 390, max_length=12,
                                         doc_stride=6), timeout=5)
        # More sequences than the model's whole queue holds (max_queue_size 3): it could never be
        # admitted, so not the retryable UNAVAILABLE of a queue that is full right now.
        d = self.assertCode(RE, self.stub.Classify,
                            pb.ClassifyRequest(model="slow", inputs=[pb.TextInput(text="a")] * 4),
                            timeout=5)
        self.assertIn("max_queue_size", d)
        # Windows far beyond the token quota: refused from the count, before any window exists.
        d = self.assertCode(RE, self.stub.Answer,
                            pb.AnswerRequest(question="q", context="." * 1999, max_length=64,
                                             doc_stride=59), timeout=5)
        self.assertIn("max_tokens_per_call", d)

    def test_metrics_survive_stalled_clients(self):
        # Ten clients that stop mid-headers used to hold the exporter's two threads for civetweb's
        # 30 s read timeout. Now a scrape still answers (the 5 s urlopen timeout in scrape() would
        # fail it otherwise) and the server drops the stalled connections by itself.
        import socket
        stalled = []
        try:
            for _ in range(10):
                c = socket.create_connection(("127.0.0.1", self.server.metrics_port), timeout=5)
                c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
                stalled.append(c)
            with urllib.request.urlopen(f"http://127.0.0.1:{self.server.metrics_port}/metrics",
                                        timeout=5) as r:
                self.assertIn(b"topserve_requests_total", r.read())
            for c in stalled:
                c.settimeout(10)
                c.recv(4096)  # raises socket.timeout unless the server closes the connection or answers
        finally:
            for c in stalled:
                c.close()

    def test_internal(self):
        labels = {"model": "broken", "method": "Classify", "code": "INTERNAL"}
        before = metric(scrape(self.server.metrics_port), "topserve_requests_total", **labels)
        d = self.assertCode(grpc.StatusCode.INTERNAL, self.stub.Classify,
                            pb.ClassifyRequest(model="broken", inputs=[pb.TextInput(text="a"),
                                                                       pb.TextInput(text="b")]),
                            timeout=10)
        self.assertIn("injected failure", d)
        self.assertEqual(metric(scrape(self.server.metrics_port), "topserve_requests_total",
                                **labels), before + 1)
        self.assertEqual(len(self.classify(["still alive"]).results), 1)

    def test_undecodable_request(self):
        # Bytes that are not a ClassifyRequest (a length past the end of the body): INVALID_ARGUMENT
        # saying so, and the server keeps serving.
        details = self.assertCode(grpc.StatusCode.INVALID_ARGUMENT, raw_unary, self.channel,
                                  "/topserve.v1.Inference/Classify", b"\x0a\xff\xff\xff\xff\x0f")
        self.assertIn("malformed topserve.v1.ClassifyRequest", details)
        self.assertEqual(len(self.classify(["still alive"]).results), 1)

    def test_malformed_bodies(self):
        """Invalid UTF-8 in any string field and malformed protobuf bodies, on every method:
        INVALID_ARGUMENT naming the field (gRPC's own parsing answered UNIMPLEMENTED with no
        message), counted under model "_unknown", and no log line per call."""
        IA = grpc.StatusCode.INVALID_ARGUMENT
        ld = client.length_delimited
        bad = b"caf\xc3"  # a truncated two-byte sequence
        good_input = ld(2, ld(1, b"fine"))
        cases = [
            ("Classify", ld(1, b"\xff"), "model"),
            ("Classify", good_input + ld(2, ld(1, bad)), "inputs[1].text"),
            ("Classify", ld(2, ld(1, b"ok") + ld(2, b"\xed\xa0\x80")), "inputs[0].text_pair"),
            ("Answer", ld(2, b"q") + ld(3, b"ctx \xc0\xaf"), "context"),  # overlong '/'
            ("Answer", ld(2, b"\xf8\x88\x80\x80\x80"), "question"),
            ("GetModel", ld(1, b"sst2\xff"), "name"),
        ]
        malformed = [
            ("Classify", good_input[:-1], "inputs[0]"),     # truncated inside the input
            ("Classify", b"\x12\x06\x0a\x03abc\x0f", "inputs[0].text: invalid wire type 7"),
            ("Answer", b"\x00", "invalid field tag"),
            ("ListModels", b"\x0a\x09abc", "field 1"),         # unknown field, truncated
        ]
        path = "/topserve.v1.Inference/"
        before = scrape(self.server.metrics_port)
        sent = {}
        for method, body, field in cases:
            details = self.assertCode(IA, raw_unary, self.channel, path + method, body,
                                      field=field)
            self.assertIn("UTF-8", details)
            sent[method] = sent.get(method, 0) + 1
        for method, body, where in malformed:
            details = self.assertCode(IA, raw_unary, self.channel, path + method, body)
            self.assertIn("malformed topserve.v1.", details)
            self.assertIn(where, details)
            sent[method] = sent.get(method, 0) + 1
        # A flood: one log line at most, not one per call.
        lines_before = sum("libprotobuf" in line for line in self.server.stderr().splitlines())
        for _ in range(300):
            code, _ = rpc_code(raw_unary, self.channel, path + "Classify", ld(2, ld(1, bad)))
            self.assertEqual(code, IA)
        sent["Classify"] += 300
        after = scrape(self.server.metrics_port)
        for method, n in sent.items():
            labels = dict(model="_unknown", method=method, code="INVALID_ARGUMENT")
            self.assertEqual(metric(after, "topserve_requests_total", **labels) -
                             (metric(before, "topserve_requests_total", **labels) or 0), n,
                             (method, labels))
        logged = sum("libprotobuf" in line for line in self.server.stderr().splitlines())
        self.assertLessEqual(logged - lines_before, 1, self.server.stderr()[-3000:])
        self.assertLessEqual(logged, 2, self.server.stderr()[-3000:])
        # The typed API still works on every method.
        self.assertEqual(len(self.classify(["still alive"]).results), 1)
        self.assertEqual(self.stub.GetModel(pb.GetModelRequest(name="sst2"), timeout=5).name, "sst2")
        self.assertGreater(len(self.stub.ListModels(pb.ListModelsRequest(), timeout=5).models), 0)

    def test_malformed_stream_messages(self):
        """On ClassifyStream a message that does not parse fails alone: an error response with code
        INVALID_ARGUMENT naming the field and the request_id when it can be read; the stream goes
        on and ends OK."""
        ld = client.length_delimited
        good = pb.ClassifyStreamRequest(request_id="good", request=pb.ClassifyRequest(
            inputs=[pb.TextInput(text="a fine film")])).SerializeToString()
        bad_text = ld(1, b"bad-utf8") + ld(2, ld(2, ld(1, b"\xff\xfe")))
        bad_id = ld(1, b"id\xff") + ld(2, ld(2, ld(1, b"ok")))
        truncated = ld(1, b"cut") + b"\x12\x09\x12"
        call = self.channel.stream_stream("/topserve.v1.Inference/ClassifyStream",
                                          request_serializer=lambda b: b,
                                          response_deserializer=pb.ClassifyStreamResponse.FromString)
        before = scrape(self.server.metrics_port)
        responses = list(call(iter([good, bad_text, bad_id, truncated, good]), timeout=30))
        self.assertEqual(len(responses), 5, responses)
        by_id = {}
        for r in responses:
            by_id.setdefault(r.request_id, []).append(r)
        self.assertEqual(len(by_id["good"]), 2)
        for r in by_id["good"]:
            self.assertFalse(r.HasField("error"), r)
            self.assertEqual(len(r.response.results), 1)
        err = by_id["bad-utf8"][0].error
        self.assertEqual(err.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        self.assertTrue(err.message.startswith("request.inputs[0].text: invalid UTF-8"), err)
        # An id that is itself not UTF-8 cannot be echoed: the error names it instead.
        err = by_id[""][0].error
        self.assertEqual(err.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        self.assertTrue(err.message.startswith("request_id: invalid UTF-8"), err)
        err = by_id["cut"][0].error
        self.assertEqual(err.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        self.assertIn("malformed topserve.v1.ClassifyStreamRequest: request", err.message)
        labels = dict(model="_unknown", method="ClassifyStream", code="INVALID_ARGUMENT")
        after = scrape(self.server.metrics_port)
        self.assertEqual(metric(after, "topserve_requests_total", **labels) -
                         (metric(before, "topserve_requests_total", **labels) or 0), 3)

    def slow_request(self, text="slow one"):
        return pb.ClassifyRequest(model="slow", inputs=[pb.TextInput(text=text)])

    def test_unavailable_queue_full(self):
        futures = [self.stub.Classify.future(self.slow_request(f"t {i}"), timeout=10)
                   for i in range(6)]
        codes = []
        for f in futures:
            try:
                f.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    self.assertIn("full", e.details())
        # Three fit in the queue (more only if the machine is so slow that the first batch left
        # before all six arrived); the rest are refused at once.
        self.assertGreaterEqual(codes.count(grpc.StatusCode.OK), 3, codes)
        self.assertGreaterEqual(codes.count(grpc.StatusCode.UNAVAILABLE), 1, codes)
        self.assertEqual(codes.count(grpc.StatusCode.OK) +
                         codes.count(grpc.StatusCode.UNAVAILABLE), 6, codes)

    def wait_metric(self, name, labels, want, timeout=5):
        deadline = time.monotonic() + timeout
        while True:
            value = metric(scrape(self.server.metrics_port), name, **labels)
            if value == want or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def test_deadline_shorter_than_queue_wait(self):
        # The one worker is busy with a long batch of the heavy model; a call that would have to
        # queue behind it past its deadline is refused at once (UNAVAILABLE: the load is the
        # reason, retryable) and never computed. Then, with the heavy model measured, a call whose
        # own compute cannot fit its deadline gets DEADLINE_EXCEEDED at once, never computed.
        self.classify(["measured"])  # Deadline shedding starts once the model has run a batch.
        before = scrape(self.server.metrics_port)
        # 5 x 392 tokens (just under max_tokens_per_call): well over 100 ms on the one thread,
        # against a 50 ms client deadline below.
        heavy = pb.ClassifyRequest(model="heavy", inputs=[pb.TextInput(text="word " * 390)] * 5)
        blocker = self.stub.Classify.future(heavy, timeout=60)
        deadline = time.monotonic() + 10
        while metric(scrape(self.server.metrics_port), "topserve_running_sequences",
                     model="heavy") != 5:
            self.assertLess(time.monotonic(), deadline, "the heavy batch never started")
            time.sleep(0.005)
        start = time.monotonic()
        details = self.assertCode(grpc.StatusCode.UNAVAILABLE, self.stub.Classify,
                                  pb.ClassifyRequest(inputs=[pb.TextInput(text="queued")]),
                                  timeout=0.05)
        self.assertIn("overloaded", details)
        self.assertLess(time.monotonic() - start, 2.0)  # at once, not at the batch's end
        self.assertEqual(len(blocker.result().results), 5)
        details = self.assertCode(grpc.StatusCode.DEADLINE_EXCEEDED, self.stub.Classify, heavy,
                                  timeout=0.05)
        self.assertIn("of compute", details)
        after = scrape(self.server.metrics_port)
        for model, code in (("sst2", "UNAVAILABLE"), ("heavy", "DEADLINE_EXCEEDED")):
            labels = {"model": model, "method": "Classify", "code": code}
            self.assertEqual(metric(after, "topserve_requests_total", **labels),
                             metric(before, "topserve_requests_total", **labels) + 1, labels)
        self.assertEqual(metric(after, "topserve_shed_sequences_total", model="sst2",
                                reason="predicted_late") -
                         metric(before, "topserve_shed_sequences_total", model="sst2",
                                reason="predicted_late"), 1)
        self.assertEqual(metric(after, "topserve_shed_sequences_total", model="heavy",
                                reason="predicted_late") -
                         metric(before, "topserve_shed_sequences_total", model="heavy",
                                reason="predicted_late"), 5)
        # Never computed: no sst2 sequence, and only the blocker's 5 heavy ones.
        self.assertEqual(metric(after, "topserve_sequences_total", model="sst2"),
                         metric(before, "topserve_sequences_total", model="sst2"))
        self.assertEqual(metric(after, "topserve_sequences_total", model="heavy"),
                         metric(before, "topserve_sequences_total", model="heavy") + 5)

    def test_client_cancellation(self):
        labels = {"model": "slow", "method": "Classify", "code": "CANCELLED"}
        before = scrape(self.server.metrics_port)
        future = self.stub.Classify.future(self.slow_request(), timeout=10)
        time.sleep(0.1)
        self.assertTrue(future.cancel())
        self.assertEqual(future.code(), grpc.StatusCode.CANCELLED)
        want = metric(before, "topserve_requests_total", **labels) + 1
        self.assertEqual(self.wait_metric("topserve_requests_total", labels, want), want)
        after = scrape(self.server.metrics_port)
        self.assertEqual(metric(after, "topserve_sequences_total", model="slow"),
                         metric(before, "topserve_sequences_total", model="slow"))

    # ---- metrics ----

    def test_metrics_match_traffic(self):
        port = self.server.metrics_port
        before = scrape(port)
        texts = [["one"], ["two words", "three words here"], ["a", "b", "c"]]
        responses = [self.classify(t, budget=0.6) for t in texts]
        rpc_code(self.stub.Classify, pb.ClassifyRequest(inputs=[]), timeout=5)
        answer = self.stub.Answer(pb.AnswerRequest(question="who?", context=CONTEXT,
                                                   max_length=64), timeout=30)
        after = scrape(port)

        def delta(name, **labels):
            return (metric(after, name, **labels) or 0) - (metric(before, name, **labels) or 0)

        ok = dict(model="sst2", method="Classify", code="OK")
        self.assertEqual(delta("topserve_requests_total", **ok), 3)
        self.assertEqual(delta("topserve_requests_total", model="sst2", method="Classify",
                               code="INVALID_ARGUMENT"), 1)
        self.assertEqual(delta("topserve_requests_total", model="squad", method="Answer",
                               code="OK"), 1)
        self.assertEqual(delta("topserve_request_duration_seconds_count", model="sst2",
                               method="Classify"), 4)
        results = [r for resp in responses for r in resp.results]
        self.assertEqual(delta("topserve_sequences_total", model="sst2"), len(results))
        self.assertEqual(delta("topserve_flops_fraction_count", model="sst2"), len(results))
        self.assertAlmostEqual(delta("topserve_flops_fraction_sum", model="sst2"),
                               sum(r.report.flops_fraction for r in results), places=6)
        self.assertAlmostEqual(delta("topserve_budget_used_sum", model="sst2"), 0.6 * len(results),
                               places=6)
        self.assertEqual(delta("topserve_tokens_total", model="sst2"),
                         sum(r.report.tokens_in for r in results))
        self.assertEqual(delta("topserve_flops_total", model="sst2"),
                         sum(r.report.flops for r in results))
        self.assertEqual(delta("topserve_unpruned_flops_total", model="sst2"),
                         sum(r.report.unpruned_flops for r in results))
        self.assertEqual(delta("topserve_queue_duration_seconds_count", model="sst2",
                               method="Classify"), len(results))
        self.assertEqual(delta("topserve_compute_duration_seconds_count", model="sst2",
                               method="Classify"), len(results))
        for layer in (0, 1):
            self.assertEqual(delta("topserve_tokens_kept_ratio_count", model="sst2",
                                   layer=str(layer)), len(results))
            self.assertAlmostEqual(
                delta("topserve_tokens_kept_ratio_sum", model="sst2", layer=str(layer)),
                sum(r.report.tokens_kept[layer] / r.report.tokens_in for r in results), places=6)
        batches = delta("topserve_batch_size_count", model="sst2")
        self.assertGreaterEqual(batches, 1)
        self.assertLessEqual(batches, len(results))
        self.assertEqual(delta("topserve_batch_size_sum", model="sst2"), len(results))
        self.assertEqual(delta("topserve_batch_tokens_sum", model="sst2"),
                         sum(r.report.tokens_in for r in results))
        # Every batch that ran is held against the predictor's expectation (its accuracy).
        self.assertEqual(delta("topserve_batch_compute_over_predicted_count", model="sst2"), batches)
        self.assertGreater(delta("topserve_batch_compute_over_predicted_sum", model="sst2"), 0)
        self.assertEqual(delta("topserve_flops_fraction_count", model="squad"),
                         len(answer.windows))
        self.assertEqual(delta("topserve_flops_total", model="squad"), answer.flops)
        for model in ("sst2", "squad", "capped", "slow"):
            self.assertEqual(metric(after, "topserve_model_ready", model=model), 1)
            self.assertEqual(metric(after, "topserve_queue_depth", model=model), 0)
        self.assertEqual(metric(after, "topserve_inflight_requests", model="sst2",
                                method="Classify"), 0)
        self.assertEqual(metric(after, "topserve_build_info", version="0.1.0"), 1)

    # ---- clients ----

    def run_tool(self, *cmd, check=True):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "TOPSERVE_STUB_DIR": os.path.join(ARGS.work,
                                                                                   "stubs")})
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def test_cpp_client(self):
        s = ["--server", self.server.address]
        out = json.loads(self.run_tool(ARGS.client, *s, "classify", "good", "bad", "--budget",
                                       "0.5", "--logits").stdout)
        self.assertEqual(len(out["results"]), 2)
        self.assertEqual(len(out["results"][0]["logits"]), 2)
        out = json.loads(self.run_tool(ARGS.client, *s, "answer", "-q", "who?", "-c", CONTEXT,
                                       "--n-best", "2").stdout)
        self.assertEqual(len(out["n_best"]), 2)
        out = json.loads(self.run_tool(ARGS.client, *s, "models").stdout)
        self.assertEqual(len(out["models"]), 7)
        proc = self.run_tool(ARGS.client, *s, "stream", "one", "two", "three")
        ids = sorted(json.loads(chunk)["request_id"]
                     for chunk in re.split(r"(?<=\n})\n", proc.stdout.strip()) if chunk.strip())
        self.assertEqual(ids, ["0", "1", "2"])
        proc = self.run_tool(ARGS.client, *s, "classify", "x", "--model", "nope", check=False)
        self.assertEqual(proc.returncode, 10 + 5)
        self.assertTrue(proc.stderr.startswith("NOT_FOUND: "), proc.stderr)

    def test_python_client(self):
        tool = os.path.join(ROOT, "tools", "client.py")
        s = ["--server", self.server.address]
        out = json.loads(self.run_tool(sys.executable, tool, *s, "classify", "good", "--pair",
                                       "bad", "--budget", "0.5").stdout)
        self.assertEqual(out["model"], "sst2")
        out = json.loads(self.run_tool(sys.executable, tool, *s, "answer", "-q", "who?", "-c",
                                       CONTEXT).stdout)
        self.assertEqual(CONTEXT[out["answer"]["start"]:out["answer"]["end"]],
                         out["answer"]["text"])
        self.assertEqual(self.run_tool(sys.executable, tool, *s, "health", "--service",
                                       "squad").stdout.strip(), "SERVING")
        proc = self.run_tool(sys.executable, tool, *s, "classify", "x", "--budget", "2",
                             check=False)
        self.assertEqual(proc.returncode, 10 + 3)
        self.assertIn("INVALID_ARGUMENT: budget", proc.stderr)

    def test_squad_eval(self):
        out_json = os.path.join(ARGS.work, "squad_eval.json")
        proc = self.run_tool(sys.executable, os.path.join(ROOT, "tools", "squad_eval.py"),
                             "--server", self.server.address, "--data", ARGS.squad, "--limit",
                             "40", "--budget", "0.5", "--json", out_json)
        self.assertRegex(proc.stdout, r"exact_match \d+\.\d\d  f1 \d+\.\d\d")
        with open(out_json) as f:
            result = json.load(f)
        self.assertEqual(result["answered"], 40)
        self.assertLessEqual(result["mean_flops_fraction"], 0.5 + 1e-9)
        # The metric itself, on known cases (official normalisation).
        import squad_eval
        self.assertEqual(squad_eval.normalize_answer("The  Cat, sat!"), "cat sat")
        self.assertEqual(squad_eval.exact_match("an Apple.", "apple"), 1.0)
        self.assertAlmostEqual(squad_eval.f1("the cat sat", "a cat sat down"), 0.8)


# ---------------------------------------------------------------------------------------------

class DrainTest(unittest.TestCase):
    """SIGTERM while calls are queued and running and a stream is open: readiness goes
    NOT_SERVING, new calls get UNAVAILABLE, every call in flight gets a real answer or
    UNAVAILABLE, nothing hangs, exit code 0."""

    def _heavy_server(self, config_name):
        """A server on the slow model whose queue may hold seconds of work (max_queue_wait_ms 0),
        so a drain has something to finish."""
        config = write_config(config_name, f"""
server:
  listen: 127.0.0.1:0
  metrics_address: 127.0.0.1
  metrics_port: 0
  drain_grace_seconds: 30
batching:
  max_batch_size: 2
  max_queue_delay_us: 0
  max_queue_wait_ms: 0
  workers: 1
  threads_per_worker: 2
models:
  - name: heavy
    path: {make_heavy_model()}
""")
        return ServerProcess(config).wait_listening()

    def test_sigterm_with_calls_in_flight(self):
        server = self._heavy_server("drain.yaml")
        try:
            self._drain(server)
        finally:
            server.close()

    def test_calls_during_drain_get_unavailable_only(self):
        """Clients that keep sending new calls through the whole drain and past the exit get
        UNAVAILABLE and nothing else. gRPC's own Server::Shutdown() answered calls that arrived
        while it ran CANCELLED (grpc/grpc#41785), which clients do not retry; the server now
        exits after its drain instead."""
        server = self._heavy_server("drain-new-calls.yaml")
        try:
            channel = grpc.insecure_channel(server.address)
            stub = grpc_pb.InferenceStub(channel)
            deadline = time.monotonic() + 60
            while client.health_check(channel, "heavy") != "SERVING":
                self.assertLess(time.monotonic(), deadline, server.stderr())
                time.sleep(0.05)
            # Work to drain for a second or so, then the signal.
            heavy_request = pb.ClassifyRequest(inputs=[pb.TextInput(text="word " * 500)] * 4)
            futures = [stub.Classify.future(heavy_request, timeout=60) for _ in range(12)]
            until = time.monotonic() + 30
            while (metric(scrape(server.metrics_port), "topserve_queue_depth", model="heavy") or 0) \
                    < 10 and time.monotonic() < until:
                time.sleep(0.01)
            late = pb.ClassifyRequest(inputs=[pb.TextInput(text="late")])
            results = []  # (monotonic time, code)
            lock = threading.Lock()
            stop = threading.Event()

            def hammer(own_channel):
                ch = grpc.insecure_channel(server.address) if own_channel else channel
                st = grpc_pb.InferenceStub(ch)
                while not stop.is_set():
                    code, _ = rpc_code(st.Classify, late, timeout=5)
                    with lock:
                        results.append((time.monotonic(), code))
                if own_channel:
                    ch.close()

            threads = [threading.Thread(target=hammer, args=(i % 2 == 1,)) for i in range(6)]
            server.proc.send_signal(signal.SIGTERM)
            server.wait_line(r"SIGTERM: draining", timeout=10)
            for t in threads:
                t.start()
            self.assertEqual(server.proc.wait(timeout=60), 0, server.stderr())
            exited = time.monotonic()
            time.sleep(0.5)  # calls after the exit too
            stop.set()
            for t in threads:
                t.join(timeout=30)
            codes = {}
            for _, code in results:
                codes[code.name] = codes.get(code.name, 0) + 1
            near_exit = sum(1 for t, _ in results if exited - 0.2 <= t <= exited + 0.05)
            print(f"drain: {len(results)} new calls during the drain: {codes}; {near_exit} "
                  "within 200 ms of the exit", file=sys.stderr)
            self.assertEqual(set(codes), {"UNAVAILABLE"}, codes)
            self.assertGreater(len(results), 100)
            self.assertGreater(near_exit, 0, "no call around the exit: the test proves nothing")
            for f in futures:  # The calls accepted before the signal were answered.
                self.assertIsNone(f.exception(timeout=60))
            channel.close()
        finally:
            server.close()

    def _drain(self, server):
        channel = grpc.insecure_channel(server.address)
        stub = grpc_pb.InferenceStub(channel)
        deadline = time.monotonic() + 60
        while client.health_check(channel, "heavy") != "SERVING":
            self.assertLess(time.monotonic(), deadline, server.stderr())
            time.sleep(0.05)
        # Every series exists, at zero, before the first request.
        fresh = scrape(server.metrics_port)
        for code in ("OK", "INVALID_ARGUMENT", "UNAVAILABLE", "RESOURCE_EXHAUSTED",
                     "DEADLINE_EXCEEDED", "CANCELLED", "INTERNAL"):
            for method in ("Classify", "ClassifyStream"):
                self.assertEqual(metric(fresh, "topserve_requests_total", model="heavy",
                                        method=method, code=code), 0, (code, method))
        for name in ("topserve_queue_duration_seconds_count",
                     "topserve_compute_duration_seconds_count",
                     "topserve_request_duration_seconds_count"):
            self.assertEqual(metric(fresh, name, model="heavy", method="Classify"), 0, name)
        for name in ("topserve_flops_fraction_count", "topserve_budget_used_count",
                     "topserve_queue_depth", "topserve_sequences_total"):
            self.assertEqual(metric(fresh, name, model="heavy"), 0, name)
        # Warm-up batches do not count as traffic.
        self.assertEqual(metric(fresh, "topserve_batch_size_count", model="heavy"), 0)
        for layer in range(4):
            self.assertEqual(metric(fresh, "topserve_tokens_kept_ratio_count", model="heavy",
                                    layer=str(layer)), 0)
        self.assertEqual(metric(fresh, "topserve_model_ready", model="heavy"), 1)

        # Enough queued work that the drain provably has something to finish: the engine is fast
        # enough that a fixed handful of requests can complete before the signal arrives.
        long_text = "word " * 500  # 502 tokens per input
        heavy_request = pb.ClassifyRequest(inputs=[pb.TextInput(text=long_text)] * 4)
        futures = [stub.Classify.future(heavy_request, timeout=60) for _ in range(40)]
        # A stream with requests in flight (queued behind the unary calls) that the client never
        # half-closes.
        outgoing = queue.Queue()

        def requests():
            while True:
                item = outgoing.get()
                if item is None:
                    return
                yield item
        stream = stub.ClassifyStream(requests(), timeout=60)
        for i in range(3):
            outgoing.put(pb.ClassifyStreamRequest(request_id=str(i), request=heavy_request))
        stream_results = {}

        def read_stream():
            try:
                for r in stream:
                    stream_results[r.request_id] = r
                stream_results["_status"] = grpc.StatusCode.OK
            except grpc.RpcError as e:
                stream_results["_status"] = e.code()
        reader = threading.Thread(target=read_stream)
        reader.start()
        # Signal only once the server holds queued work (not on a timer).
        queued = 0
        until = time.monotonic() + 30
        while queued < 20 and time.monotonic() < until:
            queued = metric(scrape(server.metrics_port), "topserve_queue_depth", model="heavy")
            time.sleep(0.01)
        self.assertGreaterEqual(queued, 20, "the requests never queued up")
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.wait_line(r"SIGTERM: draining", timeout=10)

        # Readiness goes NOT_SERVING and new calls are refused while the queue drains.
        health, refused = [], []
        while server.proc.poll() is None and time.monotonic() - sent < 30:
            try:
                health.append(client.health_check(channel, "heavy", timeout=2))
            except grpc.RpcError as e:
                health.append(e.code().name)
            code, details = rpc_code(stub.Classify, pb.ClassifyRequest(
                inputs=[pb.TextInput(text="late")]), timeout=5)
            refused.append((code, details))
            if len(refused) >= 5:
                break
            time.sleep(0.02)
        self.assertTrue(health, "the server exited before it could be probed")
        self.assertTrue(all(h != "SERVING" for h in health), health)
        self.assertIn("NOT_SERVING", health, server.stderr())
        for code, details in refused:
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE, details)

        codes = []
        for f in futures:
            try:
                r = f.result(timeout=60)
                self.assertEqual(len(r.results), 4)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
        self.assertTrue(all(c in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE) for c in codes),
                        codes)
        self.assertGreater(codes.count(grpc.StatusCode.OK), 0, codes)
        print("drain: calls answered", codes.count(grpc.StatusCode.OK), "of", len(codes),
              file=sys.stderr)
        reader.join(timeout=60)
        self.assertFalse(reader.is_alive(), "the stream hung")
        outgoing.put(None)
        self.assertIn(stream_results.get("_status"), (grpc.StatusCode.OK,
                                                      grpc.StatusCode.UNAVAILABLE))
        for i in range(3):  # Accepted stream requests were answered.
            r = stream_results.get(str(i))
            self.assertIsNotNone(r, stream_results)
            self.assertTrue(not r.HasField("error") or r.error.code == 14, r)
        self.assertEqual(server.proc.wait(timeout=60), 0, server.stderr())
        self.assertIn("drained; exiting", server.stderr())
        channel.close()


# ---------------------------------------------------------------------------------------------

class AuthTest(unittest.TestCase):
    """server.auth_token_file: every Inference call needs 'authorization: Bearer <token>' (any
    token of the file); health and reflection stay open; refused calls are never computed and are
    counted as UNAUTHENTICATED."""

    TOKENS = ("first-token-0123456789", "second-token-abcdefghij")

    @classmethod
    def setUpClass(cls):
        cls_dir = make_model("cls", "--preset", "tiny", "--task", "cls", "--seed", "5")
        qa_dir = make_model("qa", "--preset", "tiny", "--task", "qa", "--seed", "6")
        tokens = os.path.join(ARGS.work, "tokens.txt")
        with open(tokens, "w") as f:
            f.write("# test tokens\n" + "\n".join(cls.TOKENS) + "\n")
        config = write_config("auth.yaml", f"""
server:
  listen: 127.0.0.1:0
  metrics_address: 127.0.0.1
  metrics_port: 0
  auth_token_file: {tokens}
models:
  - name: sst2
    path: {cls_dir}
  - name: squad
    path: {qa_dir}
""")
        cls.server = ServerProcess(config).wait_listening()
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.stub = grpc_pb.InferenceStub(cls.channel)
        deadline = time.monotonic() + 60
        # Readiness probes need no credentials.
        while client.health_check(cls.channel, "topserve.v1.Inference") != "SERVING":
            assert time.monotonic() < deadline, cls.server.stderr()
            time.sleep(0.05)
        cls.fresh = scrape(cls.server.metrics_port)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop()

    def md(self, token):
        return client.auth_metadata(token)

    def test_refused_without_or_with_wrong_token(self):
        before = scrape(self.server.metrics_port)
        unauth = dict(model="sst2", method="Classify", code="UNAUTHENTICATED")
        self.assertEqual(metric(self.fresh, "topserve_requests_total", **unauth), 0)  # exists
        req = pb.ClassifyRequest(inputs=[pb.TextInput(text="a fine film")])
        cases = [(None, "missing credentials"),
                 ((("authorization", "Basic " + self.TOKENS[0]),), "must have the form"),
                 (self.md("wrong-token-0123456789"), "invalid token"),
                 (self.md(self.TOKENS[0] + "x"), "invalid token")]
        for metadata, message in cases:
            code, details = rpc_code(self.stub.Classify, req, timeout=10, metadata=metadata)
            self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED, (metadata, details))
            self.assertIn(message, details)
        for token in self.TOKENS:
            r = self.stub.Classify(req, timeout=10, metadata=self.md(token))
            self.assertEqual(len(r.results), 1)
        after = scrape(self.server.metrics_port)
        self.assertEqual(metric(after, "topserve_requests_total", **unauth) -
                         metric(before, "topserve_requests_total", **unauth), len(cases))
        self.assertEqual(metric(after, "topserve_requests_total", model="sst2",
                                method="Classify", code="OK") -
                         metric(before, "topserve_requests_total", model="sst2",
                                method="Classify", code="OK"), 2)
        # Only the two authenticated calls were computed.
        self.assertEqual(metric(after, "topserve_sequences_total", model="sst2") -
                         metric(before, "topserve_sequences_total", model="sst2"), 2)

    def test_every_method(self):
        calls = {
            "Answer": lambda md: self.stub.Answer(pb.AnswerRequest(
                question="who?", context="Ada wrote it."), timeout=10, metadata=md),
            "ListModels": lambda md: self.stub.ListModels(pb.ListModelsRequest(), timeout=10,
                                                          metadata=md),
            "GetModel": lambda md: self.stub.GetModel(pb.GetModelRequest(name="squad"),
                                                      timeout=10, metadata=md),
            "ClassifyStream": lambda md: list(self.stub.ClassifyStream(iter([
                pb.ClassifyStreamRequest(request_id="1", request=pb.ClassifyRequest(
                    inputs=[pb.TextInput(text="hello")]))]), timeout=10, metadata=md)),
        }
        for name, call in calls.items():
            code, details = rpc_code(call, None)
            self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED, (name, details))
            code, details = rpc_code(call, self.md(self.TOKENS[1]))
            self.assertEqual(code, grpc.StatusCode.OK, (name, details))
        samples = scrape(self.server.metrics_port)
        self.assertEqual(metric(samples, "topserve_requests_total", model="squad", method="Answer",
                                code="UNAUTHENTICATED"), 1)
        self.assertEqual(metric(samples, "topserve_requests_total", model="squad",
                                method="GetModel", code="UNAUTHENTICATED"), 1)
        self.assertEqual(metric(samples, "topserve_requests_total", model="_unknown",
                                method="ClassifyStream", code="UNAUTHENTICATED"), 1)

    def test_health_and_reflection_stay_open(self):
        self.assertEqual(client.health_check(self.channel, ""), "SERVING")
        self.assertEqual(client.health_check(self.channel, "sst2"), "SERVING")
        fields = reflection(self.channel, 7, "*")
        listing = [v for n, v in fields if n == 6][0]
        names = {dict(client.parse_fields(s))[1].decode()
                 for n, s in client.parse_fields(listing) if n == 1}
        self.assertIn("topserve.v1.Inference", names)

    def test_clients_send_the_token(self):
        env = {**os.environ, "TOPSERVE_STUB_DIR": os.path.join(ARGS.work, "stubs")}
        env.pop("TOPSERVE_TOKEN", None)
        s = ["--server", self.server.address]
        tool = [sys.executable, os.path.join(ROOT, "tools", "client.py")]
        for cmd in (tool, [ARGS.client]):
            proc = subprocess.run([*cmd, *s, "classify", "good"], capture_output=True, text=True,
                                  timeout=120, env=env)
            self.assertEqual(proc.returncode, 10 + 16, proc.stderr)
            self.assertTrue(proc.stderr.startswith("UNAUTHENTICATED: "), proc.stderr)
            proc = subprocess.run([*cmd, *s, "--token", self.TOKENS[0], "classify", "good"],
                                  capture_output=True, text=True, timeout=120, env=env)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(len(json.loads(proc.stdout)["results"]), 1)
            proc = subprocess.run([*cmd, *s, "models"], capture_output=True, text=True,
                                  timeout=120, env={**env, "TOPSERVE_TOKEN": self.TOKENS[1]})
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(len(json.loads(proc.stdout)["models"]), 2)


# ---------------------------------------------------------------------------------------------

class TlsTest(unittest.TestCase):
    """server.tls: TLS on the gRPC port with a certificate and key from files, optional client
    certificates (mutual TLS). Certificates are made here with openssl
    (a test CA, a server certificate for localhost/127.0.0.1, a client certificate, and a second
    CA with its own client certificate that the server must not trust); none is committed."""

    @classmethod
    def openssl(cls, *args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cls.dir)

    @classmethod
    def make_ca(cls, name):
        cls.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                    "-out", f"{name}.crt")

    @classmethod
    def make_cert(cls, name, ca, ext):
        cls.openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        with open(os.path.join(cls.dir, f"{name}.ext"), "w") as f:
            f.write(ext)
        cls.openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey",
                    f"{ca}.key", "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                    "-out", f"{name}.crt")

    @classmethod
    def path(cls, name):
        return os.path.join(cls.dir, name)

    @classmethod
    def setUpClass(cls):
        cls.dir = os.path.join(ARGS.work, "tls")
        shutil.rmtree(cls.dir, ignore_errors=True)
        os.makedirs(cls.dir)
        cls.make_ca("ca")
        cls.make_ca("rogue-ca")
        cls.make_cert("server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                      "extendedKeyUsage=serverAuth\n")
        cls.make_cert("client", "ca", "extendedKeyUsage=clientAuth\n")
        cls.make_cert("rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n")
        cls.model_dir = make_model("cls", "--preset", "tiny", "--task", "cls", "--seed", "5")
        cls.servers = {}
        for name, extra in (("tls", ""), ("mtls", f"    client_ca_file: {cls.path('ca.crt')}\n")):
            config = write_config(f"{name}.yaml", f"""
server:
  listen: 127.0.0.1:0
  metrics_address: 127.0.0.1
  metrics_port: 0
  drain_grace_seconds: 1
  tls:
    cert_file: {cls.path('server.crt')}
    key_file: {cls.path('server.key')}
{extra}batching:
  workers: 1
  threads_per_worker: 1
models:
  - name: sst2
    path: {cls.model_dir}
""")
            cls.servers[name] = ServerProcess(config).wait_listening()
            cls.servers[name].wait_line(r"ready: ")

    @classmethod
    def tearDownClass(cls):
        codes = {name: server.stop() for name, server in cls.servers.items()}  # stop all first
        for name, code in codes.items():
            assert code == 0, f"{name}: exit code {code}\n{cls.servers[name].stderr()}"

    def read(self, name):
        with open(self.path(name), "rb") as f:
            return f.read()

    def classify(self, channel):
        stub = grpc_pb.InferenceStub(channel)
        return rpc_code(stub.Classify, pb.ClassifyRequest(inputs=[pb.TextInput(text="good")]),
                        timeout=10)

    def secure(self, server, ca="ca", cert=None):
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.read(f"{ca}.crt"),
            private_key=self.read(f"{cert}.key") if cert else None,
            certificate_chain=self.read(f"{cert}.crt") if cert else None)
        return grpc.secure_channel(f"localhost:{self.servers[server].port}", creds)

    def test_tls_ok(self):
        with self.secure("tls") as channel:
            self.assertEqual(self.classify(channel), (grpc.StatusCode.OK, None))

    def test_plaintext_refused(self):
        for name in ("tls", "mtls"):
            with grpc.insecure_channel(self.servers[name].address) as channel:
                code, details = self.classify(channel)
                self.assertEqual(code, grpc.StatusCode.UNAVAILABLE, details)

    def test_server_not_trusted_by_client(self):
        with self.secure("tls", ca="rogue-ca") as channel:
            code, details = self.classify(channel)
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE, details)

    def test_mtls_ok(self):
        with self.secure("mtls", cert="client") as channel:
            self.assertEqual(self.classify(channel), (grpc.StatusCode.OK, None))

    def test_mtls_without_client_cert_refused(self):
        with self.secure("mtls") as channel:
            code, details = self.classify(channel)
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE, details)

    def test_mtls_client_cert_from_another_ca_refused(self):
        with self.secure("mtls", cert="rogue") as channel:
            code, details = self.classify(channel)
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE, details)

    def test_clients_tls_flags(self):
        env = {**os.environ, "TOPSERVE_STUB_DIR": os.path.join(ARGS.work, "stubs")}
        tool = [sys.executable, os.path.join(ROOT, "tools", "client.py")]
        ca = ["--tls-ca", self.path("ca.crt")]
        mine = [*ca, "--tls-cert", self.path("client.crt"), "--tls-key", self.path("client.key")]
        for cmd in (tool, [ARGS.client]):
            for server, flags, ok in (("tls", ca, True), ("tls", [], False), ("mtls", mine, True),
                                      ("mtls", ca, False)):
                s = ["--server", f"localhost:{self.servers[server].port}", "--timeout-ms"
                     if cmd == [ARGS.client] else "--timeout",
                     "10000" if cmd == [ARGS.client] else "10"]
                proc = subprocess.run([*cmd, *s, *flags, "classify", "good"], capture_output=True,
                                      text=True, timeout=120, env=env)
                if ok:
                    self.assertEqual(proc.returncode, 0, (cmd, server, flags, proc.stderr))
                    self.assertEqual(len(json.loads(proc.stdout)["results"]), 1)
                else:
                    self.assertEqual(proc.returncode, 10 + 14, (cmd, server, flags, proc.stderr))

    def test_metrics_stay_plain_http(self):
        # The metrics port has no TLS (Debian's civetweb crashes with OpenSSL 3; docs/api.md).
        samples = scrape(self.servers["tls"].metrics_port)
        self.assertIsNotNone(metric(samples, "topserve_model_ready", model="sst2"))


# ---------------------------------------------------------------------------------------------

class StartupTest(unittest.TestCase):
    """Bad configs and models: a non-zero exit and one clear line (the last one on stderr)."""

    def run_server(self, *args, timeout=60):
        proc = subprocess.run([ARGS.server, *args], capture_output=True, text=True,
                              timeout=timeout)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return proc.returncode, lines

    def test_unknown_key(self):
        path = write_config("bad-key.yaml", "server:\n  listen: 127.0.0.1:0\n  metrcs_port: 1\n")
        code, lines = self.run_server("--config", path)
        self.assertEqual(code, 2)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("server.metrcs_port: unknown key", lines[0])

    def test_bad_value(self):
        path = write_config("bad-value.yaml", "batching: {workers: 0}\nmodels: [{name: m, path: /x}]\n")
        code, lines = self.run_server("--config", path)
        self.assertEqual(code, 2)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("batching.workers", lines[0])

    def test_missing_model_dir(self):
        code, lines = self.run_server("--model", os.path.join(ARGS.work, "no-such-model"),
                                      "--port", "0", "--metrics-port", "-1")
        self.assertEqual(code, 2)
        self.assertIn("model 'no-such-model'", lines[-1])
        self.assertIn("config.json", lines[-1])

    @staticmethod
    def broken_copy(name):
        """A fresh copy of the tiny classification model under models/<name>, to damage."""
        good = make_model("cls", "--preset", "tiny", "--task", "cls", "--seed", "5")
        bad = os.path.join(ARGS.work, "models", name)
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(good, bad)
        return bad

    def test_corrupt_weights(self):
        bad = self.broken_copy("corrupt")
        weights = os.path.join(bad, "model.safetensors")
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) // 2)
        code, lines = self.run_server("--model", f"broken={bad}", "--port", "0",
                                      "--metrics-port", "-1")
        self.assertEqual(code, 1)
        self.assertTrue(lines[-1].startswith("topserve-server: error: model 'broken'"), lines[-1])
        self.assertIn("model.safetensors", lines[-1])

    def test_absurd_layer_count(self):
        # config.json claims a billion layers: start-up used to size per-layer state by it (6 GB of
        # RSS, no output); now the weight file's header refuses it before anything is allocated.
        bad = self.broken_copy("billion-layers")
        path = os.path.join(bad, "config.json")
        with open(path) as f:
            config = json.load(f)
        config["num_hidden_layers"] = 1000000000
        with open(path, "w") as f:
            json.dump(config, f)
        code, lines = self.run_server("--model", f"huge={bad}", "--port", "0", "--metrics-port", "-1")
        self.assertEqual(code, 2)
        self.assertTrue(lines[-1].startswith("topserve-server: error: model 'huge'"), lines[-1])
        self.assertIn("num_hidden_layers 1000000000", lines[-1])

    def test_port_in_use(self):
        good = make_model("cls", "--preset", "tiny", "--task", "cls", "--seed", "5")
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            code, lines = self.run_server("--model", good, "--listen", f"127.0.0.1:{port}",
                                          "--metrics-port", "-1")
        self.assertEqual(code, 1)
        self.assertIn("server.listen", lines[-1])

    def test_bad_token_file(self):
        good = make_model("cls", "--preset", "tiny", "--task", "cls", "--seed", "5")
        missing = os.path.join(ARGS.work, "no-such-tokens")
        code, lines = self.run_server("--model", good, "--auth-token-file", missing,
                                      "--port", "0", "--metrics-port", "-1")
        self.assertEqual(code, 2)
        self.assertEqual(lines[-1], f"topserve-server: error: server.auth_token_file: {missing}: "
                                    "cannot open the file")
        short = os.path.join(ARGS.work, "short-tokens")
        with open(short, "w") as f:
            f.write("# comment\nshort\n")
        code, lines = self.run_server("--model", good, "--auth-token-file", short,
                                      "--port", "0", "--metrics-port", "-1")
        self.assertEqual(code, 2)
        self.assertIn(f"{short}: line 2: a token must be 16..4096 bytes, not 5", lines[-1])

    def test_bad_tls_files(self):
        d = os.path.join(ARGS.work, "tls-startup")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name in ("a", "b"):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                            f"/CN={name}", "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.crt"],
                           check=True, capture_output=True)
        good = make_model("cls", "--preset", "tiny", "--task", "cls", "--seed", "5")
        base = ["--model", good, "--port", "0", "--metrics-port", "-1"]
        code, lines = self.run_server(*base, "--tls-cert", f"{d}/a.crt")
        self.assertEqual(code, 2)
        self.assertIn("server.tls.key_file: must be set too", lines[-1])
        code, lines = self.run_server(*base, "--tls-cert", f"{d}/a.crt", "--tls-key", f"{d}/b.key")
        self.assertEqual(code, 2)
        self.assertEqual(lines[-1], f"topserve-server: error: server.tls.key_file: {d}/b.key is "
                                    f"not the key of the certificate in {d}/a.crt")
        code, lines = self.run_server(*base, "--tls-cert", f"{d}/a.key", "--tls-key", f"{d}/a.key")
        self.assertEqual(code, 2)
        self.assertIn(f"server.tls.cert_file: {d}/a.key: ", lines[-1])
        code, lines = self.run_server(*base, "--tls-cert", f"{d}/a.crt", "--tls-key", f"{d}/a.key",
                                      "--tls-client-ca", f"{d}/missing.crt")
        self.assertEqual(code, 2)
        self.assertIn(f"server.tls.client_ca_file: cannot read {d}/missing.crt", lines[-1])
        # Valid files pass --check.
        code, lines = self.run_server(*base, "--tls-cert", f"{d}/a.crt", "--tls-key", f"{d}/a.key",
                                      "--tls-client-ca", f"{d}/b.crt", "--check")
        self.assertEqual(code, 0, lines)

    def test_example_config(self):
        # deploy/config.example.yaml works as shipped, from the repository root (its model is the
        # demo model in models/sst2-small).
        if not os.path.exists(os.path.join(ROOT, "models", "sst2-small", "config.json")):
            self.skipTest("models/sst2-small is not in this checkout")
        proc = subprocess.run([ARGS.server, "--config", "deploy/config.example.yaml", "--check"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        lines = proc.stderr.splitlines()
        self.assertEqual(proc.returncode, 0, lines)
        self.assertIn("config and models OK", lines[-1])

    def test_check_and_flags_override(self):
        good = make_model("cls", "--preset", "tiny", "--task", "cls", "--seed", "5")
        path = write_config("check.yaml", f"models: [{{name: a, path: /nowhere}}]\n")
        code, lines = self.run_server("--config", path, "--model", f"a={good}", "--threads", "1",
                                      "--workers", "1", "--port", "7777", "--check")
        self.assertEqual(code, 0, lines)
        text = "\n".join(lines)
        self.assertIn(f"path: {good}", text)
        self.assertIn("listen: 0.0.0.0:7777", text)
        self.assertIn("threads_per_worker: 1", text)
        self.assertIn("config and models OK", lines[-1])


def main():
    global ARGS, pb, grpc_pb
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--client", required=True)
    p.add_argument("--engine-ref", required=True)
    p.add_argument("--cli", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--vocab", default=os.path.join(ROOT, "..", "shared", "data",
                                                   "bert-base-uncased", "vocab.txt"))
    p.add_argument("--squad", default=os.path.join(ROOT, "..", "shared", "data", "squad",
                                                   "dev-v1.1.json"))
    ARGS, rest = p.parse_known_args()
    os.makedirs(ARGS.work, exist_ok=True)
    pb, grpc_pb = client.load_stubs(os.path.join(ARGS.work, "stubs"))
    unittest.main(argv=[sys.argv[0], "-v", *rest])


if __name__ == "__main__":
    main()
