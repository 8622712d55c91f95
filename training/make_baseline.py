#!/usr/bin/env python3
"""Schedules for the untrained attention top-k baseline: the unpruned fine-tuned model (no pruning
training) with a schedule of a given shape, scaled to a FLOPs target on the calibration sentences
exactly as the trainer's export does.

  # ToP's learned shape, no training of the weights:
  .venv/bin/python training/make_baseline.py --model <teacher dir> --shape-from top-4x.yaml \
      --target 0.25 --out topk-untrained-4x.yaml
  # a uniform shape (every layer keeps the same fraction, from --start-layer on):
  .venv/bin/python training/make_baseline.py --model <teacher dir> --uniform --target 0.25 --out ...
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import cost  # noqa: E402
import data  # noqa: E402
import schedule as schedule_mod  # noqa: E402
import top_train  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--target", type=float, required=True)
    ap.add_argument("--out", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--shape-from", help="a schedule whose learned shape is reused")
    g.add_argument("--uniform", action="store_true")
    ap.add_argument("--start-layer", type=int, default=0)
    ap.add_argument("--placement", default=cost.AFTER_MHA, choices=cost.PLACEMENTS)
    ap.add_argument("--train", default=os.path.join(data.DATA, "sst2", "train.tsv"))
    ap.add_argument("--max-len", type=int, default=64)
    args = ap.parse_args(argv)
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    L, d, fw = config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]
    nl = len(config.get("id2label") or {"0": 0, "1": 1})
    tok = data.Tokenizer(os.path.join(args.model, "vocab.txt"))
    calib = data._cached("calib", f"v2:{top_train.file_md5(args.train)}:{tok.tag}:{args.max_len}",
                         lambda: top_train.calibration_lengths(tok, args.train, args.max_len))
    if args.shape_from:
        src = schedule_mod.read(args.shape_from, L)
        shape = src["keep_ratios"]
        placement = src.get("placement", args.placement)
        what = f"shape of {os.path.basename(args.shape_from)}"
    else:
        shape = schedule_mod.geometric(L, 0.5, args.start_layer)
        placement = args.placement
        what = f"uniform keep ratio from layer {args.start_layer}"
    ratios, achieved, mult = schedule_mod.calibrate(shape, calib, args.target, d, fw, placement, nl)
    schedule_mod.write(args.out, ratios, placement, args.target, "topk-untrained", comments=[
        f"attention top-k without pruning training ({what}), scaled by {mult:.4f} to "
        f"{achieved:.4f} of the unpruned FLOPs of the calibration sentences"])
    print(f"wrote {args.out}: {schedule_mod.rounded(ratios)} (calibration FLOPs {achieved:.4f})")


if __name__ == "__main__":
    main()
