#!/usr/bin/env python3
"""A pre-trained encoder (Hugging Face BertModel directory, e.g. all-MiniLM-L6-v2) -> a model
directory in our layout with a freshly initialised task head, ready for training/finetune.py.

  .venv/bin/python training/from_pretrained.py --src <BertModel dir> --out <dir> --task cls \
      [--labels negative,positive] [--seed 0]

Tensor names gain the "bert." prefix of BertFor*; "embeddings.position_ids" (a buffer) is dropped;
the head (classifier, or qa_outputs for --task qa) is drawn from N(0, initializer_range) with the
given seed and a zero bias, as transformers initialises it. The pooler is kept when the source has
one (BertModel checkpoints usually do) and initialised the same way otherwise.
"""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import topserve_model  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--task", choices=["cls", "qa"], default="cls")
    ap.add_argument("--labels", default="negative,positive", help="cls: label names, in id order")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from safetensors.numpy import load_file
    with open(os.path.join(args.src, "config.json"), encoding="utf-8") as f:
        src_config = json.load(f)
    if src_config.get("model_type") != "bert":
        raise SystemExit(f"{args.src}: model_type {src_config.get('model_type')!r}, want bert")
    src = load_file(os.path.join(args.src, "model.safetensors"))

    config = {k: v for k, v in src_config.items()
              if k not in ("_name_or_path", "architectures", "gradient_checkpointing",
                           "transformers_version", "use_cache")}
    config["architectures"] = [topserve_model.TASK_ARCHITECTURE[args.task]]
    if args.task == "cls":
        labels = args.labels.split(",")
        config["id2label"] = {str(i): name for i, name in enumerate(labels)}
        config["label2id"] = {name: i for i, name in enumerate(labels)}
    else:
        config.pop("id2label", None)
        config.pop("label2id", None)
    config["_source"] = os.path.basename(os.path.normpath(args.src))

    rng = np.random.default_rng(args.seed)
    std = float(src_config.get("initializer_range", 0.02))
    tensors = {}
    for name, shape in topserve_model.tensor_specs(config):
        plain = name[len("bert."):] if name.startswith("bert.") else name
        if plain in src:
            value = np.asarray(src[plain], dtype=np.float32)
            if tuple(value.shape) != tuple(shape):
                raise SystemExit(f"{args.src}: {plain} has shape {value.shape}, want {tuple(shape)}")
        elif name.endswith(".bias"):
            value = np.zeros(shape, dtype=np.float32)
        elif name.startswith(("classifier.", "qa_outputs.", "bert.pooler.")):
            value = rng.normal(0.0, std, size=shape).astype(np.float32)
        else:
            raise SystemExit(f"{args.src}: no tensor {plain} for {name}")
        tensors[name] = value
    topserve_model.write_model_dir(args.out, config, tensors, os.path.join(args.src, "vocab.txt"))
    print(f"wrote {args.out}: {len(tensors)} tensors, task {args.task}", file=sys.stderr)


if __name__ == "__main__":
    main()
