#!/usr/bin/env python3
"""Learning curve of a training/finetune.py run: training loss (50-step means) and dev accuracy
against the step, from its log.jsonl, as a PNG.

  .venv/bin/python training/plot_curve.py --log training/.cache/runs/minilm-sst2/ft/log.jsonl \
      --out docs/training/minilm-sst2-curve.png [--title "..."]
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    loss, dev = [], []
    with open(args.log, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                loss.append((row["step"], row["loss"]))
            if "dev_acc" in row:
                dev.append((row["step"], row["dev_acc"]))
    if not loss and not dev:
        raise SystemExit(f"{args.log}: no loss or dev_acc rows")
    fig, ax = plt.subplots(figsize=(7, 4))
    if loss:
        ax.plot(*zip(*loss), color="tab:blue", label="training loss (50-step mean)")
    ax.set_xlabel("step (batch of 32)")
    ax.set_ylabel("cross-entropy", color="tab:blue")
    ax2 = ax.twinx()
    if dev:
        ax2.plot(*zip(*dev), "o-", color="tab:red", label="SST-2 dev accuracy")
        best = max(dev, key=lambda r: r[1])
        ax2.annotate(f"{best[1]:.3f}", best, textcoords="offset points", xytext=(0, 6),
                     ha="center", color="tab:red")
    ax2.set_ylabel("dev accuracy", color="tab:red")
    ax.set_title(args.title or os.path.dirname(args.log))
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
