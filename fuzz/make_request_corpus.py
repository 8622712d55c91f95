#!/usr/bin/env python3
"""Regenerates the seed corpora of fuzz_request and fuzz_server_config (small, deterministic;
checked in as fuzz/corpus/<target>/seed-*).

  .venv/bin/python fuzz/make_request_corpus.py

fuzz_request: one selector byte (0 Classify, 1 Answer, 2 ClassifyStream, 3 GetModel, 4 ListModels)
  + a request body: valid requests of every kind (pairs, budgets, truncation modes, QA window
  settings), and bodies with invalid UTF-8 or malformed wire data.
fuzz_server_config: deploy/config.example.yaml and a few small configs (TLS keys, per-model
  batching overrides).
"""

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import client  # noqa: E402


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"seed-{name}"), "wb") as f:
        f.write(data)


def main():
    pb, _ = client.load_stubs(tempfile.mkdtemp(prefix="topserve-stubs-"))
    ld = client.length_delimited
    T = pb.TextInput
    classify = {
        "cls-one": pb.ClassifyRequest(inputs=[T(text="a great movie")]),
        "cls-pair": pb.ClassifyRequest(model="cls", inputs=[T(text="premise", text_pair="hyp")],
                                       budget=0.5, min_budget=0.25, priority=2, return_logits=True),
        "cls-many": pb.ClassifyRequest(inputs=[T(text="x " * 40), T(text="Zoë café 東京"),
                                               T(text="y", text_pair="")],
                                       truncation=pb.TRUNCATION_ONLY_FIRST),
        "cls-capped": pb.ClassifyRequest(model="capped", inputs=[T(text="z")], budget=0.75),
        "cls-none": pb.ClassifyRequest(inputs=[T(text="word " * 300)],
                                       truncation=pb.TRUNCATION_NONE),
    }
    for name, req in classify.items():
        write("fuzz_request", name, b"\x00" + req.SerializeToString())
        stream = pb.ClassifyStreamRequest(request_id=name, request=req)
        write("fuzz_request", "stream-" + name, b"\x02" + stream.SerializeToString())
    context = ("Ada Lovelace, born in London in 1815, wrote the first published algorithm. "
               "Zoë visited 東京. ") * 4
    answer = {
        "qa-default": pb.AnswerRequest(question="Who wrote it?", context=context),
        "qa-windows": pb.AnswerRequest(model="qa", question="Where?", context=context,
                                       max_length=32, doc_stride=8, n_best=5,
                                       max_answer_tokens=4, max_query_tokens=6),
        "qa-stride0": pb.AnswerRequest(question="q", context=context, max_length=16, doc_stride=0),
    }
    for name, req in answer.items():
        write("fuzz_request", name, b"\x01" + req.SerializeToString())
    write("fuzz_request", "get-model", b"\x03" + pb.GetModelRequest(name="qa").SerializeToString())
    write("fuzz_request", "list-models", b"\x04")
    write("fuzz_request", "bad-utf8", b"\x00" + ld(2, ld(1, b"caf\xc3")))
    write("fuzz_request", "truncated", b"\x01" + ld(3, b"context")[:-2])

    with open(os.path.join(ROOT, "deploy", "config.example.yaml"), "rb") as f:
        write("fuzz_server_config", "example", f.read())
    write("fuzz_server_config", "small", b"""server:
  listen: 127.0.0.1:0
  metrics_port: -1
  tls:
    cert_file: s.crt
    key_file: s.key
    client_ca_file: ca.crt
batching:
  workers: 2
  threads_per_worker: 0
limits:
  max_inputs_per_call: 8
models:
  - name: a
    path: /m/a
    default_budget: 0.5
    max_budget: 0.75
    precision: int8
    batching:
      max_queue_size: 3
      max_queue_delay_us: 100
""")
    write("fuzz_server_config", "flow", b'{"models": [{"name": "x", "path": "p"}], '
          b'"server": {"drain_grace_seconds": 1.5}}')


if __name__ == "__main__":
    main()
