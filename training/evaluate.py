#!/usr/bin/env python3
"""Evaluates a model directory on a text<TAB>label set, unpruned or with a pruning schedule applied by
the deployable rule (the engine's): after layer l's MHA keep ceil(r_l * n_l) tokens by attention
received, [CLS] always kept, ties to the lower position, kept tokens in order.

  .venv/bin/python training/evaluate.py --model models/sst2-small \
      [--schedule models/sst2-small/schedules/top-4x.yaml | --unpruned] [--json out.json] [--dump out.jsonl]

Prints accuracy and FLOPs: real-length (sum of pruned MACs / sum of unpruned MACs at each sentence's
own length, the engine's cost model), and, labelled, against sequences padded to --padded-len.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import cost  # noqa: E402
import data  # noqa: E402
import schedule as schedule_mod  # noqa: E402
from modeling import topk_pruner  # noqa: E402


@torch.no_grad()
def evaluate(model, examples, keep_ratios=None, placement=cost.AFTER_MHA, batch_size=64,
             padded_len=64, return_outputs=False, budget=None):
    """Accuracy and FLOPs with the schedule applied as written (keep_ratios), or, with `budget`, with
    the engine's per-request budget planner shaping the schedule (schedule.planner_kept)."""
    was_training = model.training
    model.eval()
    c = model.config
    d, f, L, nl = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_labels
    correct, used, full, padded, seq_ratio = 0, 0, 0, 0, 0.0
    kept_sum = [0] * L
    outputs = [None] * len(examples)
    lengths = [len(s) for s, _ in examples]
    for idx in data.sorted_batches(lengths, batch_size):
        ids, presence = data.pad_batch([examples[i][0] for i in idx])
        kept_counts = []
        pruner = None
        plans = None
        if budget is not None:
            plans = [schedule_mod.planner_kept(lengths[i], keep_ratios, budget, d, f, placement, nl)
                     for i in idx]
        if keep_ratios is not None:
            base = topk_pruner(keep_ratios, plans)

            def pruner(l, imp, pres):
                new = base(l, imp, pres)
                kept_counts.append((new > 0).sum(-1).tolist())
                return new
        logits, _, _ = model(ids, presence, pruner=pruner)
        pred = logits.argmax(-1).tolist()
        for b, i in enumerate(idx):
            n = lengths[i]
            kept = [kc[b] for kc in kept_counts] if kept_counts else [n] * L
            if keep_ratios is not None:
                assert kept == (plans[b] if plans else cost.schedule_kept(n, keep_ratios)), (kept, n)
            u = cost.encoder_macs(n, kept, d, f, placement, nl, layers=L)
            un = cost.unpruned_macs(n, d, f, L, nl)
            used += u
            full += un
            padded += cost.unpruned_macs(max(padded_len, n), d, f, L, nl)
            seq_ratio += u / un
            for l in range(L):
                kept_sum[l] += kept[l]
            correct += int(pred[b] == examples[i][1])
            if return_outputs:
                outputs[i] = {"input_ids": [int(x) for x in examples[i][0]], "label": examples[i][1],
                              "logits": logits[b].tolist(), "kept": kept}
    if was_training:
        model.train()
    N = len(examples)
    res = {"accuracy": correct / N, "examples": N, "flops_fraction": used / full,
           "flops_reduction": full / used, "mean_seq_flops_fraction": seq_ratio / N,
           "padded_len": padded_len, "flops_reduction_vs_padded": padded / used,
           "mean_tokens": sum(lengths) / N, "mean_kept_per_layer": [k / N for k in kept_sum],
           "keep_ratios": keep_ratios, "placement": placement, "budget": budget}
    if return_outputs:
        res["outputs"] = outputs
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--schedule", help="pruning.yaml to apply (default: <model>/pruning.yaml if present)")
    ap.add_argument("--keep-ratios", help="comma-separated keep ratios (instead of --schedule)")
    ap.add_argument("--placement", default=None, choices=cost.PLACEMENTS)
    ap.add_argument("--unpruned", action="store_true")
    ap.add_argument("--budget", type=float, default=None,
                    help="per-request FLOPs budget: plan each sentence like the engine's budget planner")
    ap.add_argument("--data", default=os.path.join(data.DATA, "sst2", "dev.tsv"))
    ap.add_argument("--max-len", type=int, default=None, help="default: max_position_embeddings")
    ap.add_argument("--padded-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--dump", help="write per-example logits and kept counts (JSONL)")
    args = ap.parse_args(argv)
    common.setup_threads(args.threads)
    model, _ = common.load_model(args.model)
    tok = data.Tokenizer(os.path.join(args.model, "vocab.txt"))
    ex = data.load_classification(args.data, tok, args.max_len or model.config.max_position_embeddings)
    ratios, placement, src = None, args.placement or cost.AFTER_MHA, "unpruned"
    if not args.unpruned:
        if args.keep_ratios:
            ratios = [float(x) for x in args.keep_ratios.split(",")]
            src = "--keep-ratios"
        else:
            path = args.schedule or os.path.join(args.model, "pruning.yaml")
            if args.schedule or os.path.exists(path):
                s = schedule_mod.read(path, model.config.num_hidden_layers)
                ratios, src = s["keep_ratios"], path
                placement = args.placement or s.get("placement", cost.AFTER_MHA)
    if args.budget is not None:
        if not (0.0 < args.budget <= 1.0):
            raise SystemExit("--budget must be in (0, 1]")
        if ratios is None:
            raise SystemExit("--budget needs a schedule")
        src += f" at budget {args.budget:g}"
    res = evaluate(model, ex, ratios, placement, padded_len=args.padded_len,
                   return_outputs=bool(args.dump), budget=args.budget)
    res["model"], res["schedule"], res["data"] = args.model, src, args.data
    if args.dump:
        with open(args.dump, "w") as f:
            for o in res.pop("outputs"):
                f.write(json.dumps(o) + "\n")
    print(f"{args.model} [{src}] on {os.path.basename(args.data)}: accuracy {res['accuracy'] * 100:.2f}% "
          f"({res['examples']} examples); real-length FLOPs {res['flops_fraction'] * 100:.2f}% of unpruned "
          f"= {res['flops_reduction']:.2f}x reduction (vs padded to {args.padded_len}: "
          f"{res['flops_reduction_vs_padded']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
