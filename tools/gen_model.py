#!/usr/bin/env python3
"""Generates a random BERT model directory in the Hugging Face layout (for tests and benchmarks).

Writes config.json, model.safetensors (F32, F16 or BF16), vocab.txt (a copy) and
tokenizer_config.json. The same arguments and seed give byte-identical files. Weights are drawn
from N(0, std); LayerNorm weights from 1 + N(0, std/2) and LayerNorm biases from N(0, std/2), as in
the golden tiny models. F16/BF16 files hold the same draws rounded (nearest even), so an f32 and an
f16 model of one seed differ only by that rounding.

  .venv/bin/python tools/gen_model.py --out /tmp/m --preset tiny --task cls --dtype f16 --seed 1
  .venv/bin/python tools/gen_model.py --out /tmp/base --preset bert-base --task qa
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import topserve_model as tm  # noqa: E402

PRESETS = {
    # name: (layers, hidden, heads, ffn)
    "tiny": (2, 64, 2, 256),
    "bert-base": (12, 768, 12, 3072),
}


def random_tensors(config, seed, std):
    """name -> float32 array for every tensor of the task checkpoint, drawn in checkpoint order."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in tm.tensor_specs(config):
        if name.endswith("LayerNorm.weight"):
            values = 1.0 + rng.normal(0.0, std / 2, size=shape)
        elif name.endswith("LayerNorm.bias"):
            values = rng.normal(0.0, std / 2, size=shape)
        else:
            values = rng.normal(0.0, std, size=shape)
        tensors[name] = values.astype(np.float32)
    return tensors


def parse_args(argv):
    default_vocab = os.path.join(tm.default_shared_dir(), "data", "bert-base-uncased", "vocab.txt")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output model directory (created)")
    p.add_argument("--task", choices=["cls", "qa"], default="cls")
    p.add_argument("--preset", choices=sorted(PRESETS), help="layers/hidden/heads/ffn shortcut "
                   "(tiny = 2/64/2/256, bert-base = 12/768/12/3072); explicit flags override it")
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--ffn", type=int)
    p.add_argument("--vocab", default=default_vocab, help="vocab.txt to copy (default: %(default)s)")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--std", type=float, default=0.2, help="weight standard deviation")
    p.add_argument("--labels", default="negative,positive", help="comma-separated class names (cls)")
    p.add_argument("--act", choices=sorted(tm.ACTIVATIONS), default="gelu", help="hidden_act")
    p.add_argument("--max-pos", type=int, default=512, help="max_position_embeddings")
    p.add_argument("--type-vocab", type=int, default=2, help="type_vocab_size")
    p.add_argument("--eps", type=float, default=1e-12, help="layer_norm_eps")
    p.add_argument("--no-lower-case", action="store_true", help="tokenizer_config do_lower_case false")
    args = p.parse_args(argv)
    layers, hidden, heads, ffn = PRESETS[args.preset or "tiny"]
    args.layers = layers if args.layers is None else args.layers
    args.hidden = hidden if args.hidden is None else args.hidden
    args.heads = heads if args.heads is None else args.heads
    args.ffn = ffn if args.ffn is None else args.ffn
    for name in ("layers", "hidden", "heads", "ffn", "max_pos", "type_vocab"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden} must be a multiple of --heads {args.heads}")
    if args.std < 0:
        p.error("--std must be >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if args.task == "cls" and not labels:
        sys.exit("gen_model: --labels needs at least one name")
    vocab_size = tm.count_vocab(args.vocab)
    config = tm.bert_config(task=args.task, vocab_size=vocab_size, hidden=args.hidden,
                            layers=args.layers, heads=args.heads, ffn=args.ffn, max_pos=args.max_pos,
                            type_vocab=args.type_vocab, act=args.act, eps=args.eps, labels=labels)
    tensors = random_tensors(config, args.seed, args.std)
    tokenizer_config = {"do_lower_case": not args.no_lower_case, "model_max_length": args.max_pos}
    tm.write_model_dir(args.out, config, tensors, args.vocab, dtype=args.dtype.upper(),
                       tokenizer_config=tokenizer_config)
    params = sum(int(np.prod(t.shape)) for t in tensors.values())
    print(f"gen_model: wrote {args.out} ({args.task}, {args.layers} layers, hidden {args.hidden}, "
          f"{args.heads} heads, ffn {args.ffn}, vocab {vocab_size}, {params} parameters, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
