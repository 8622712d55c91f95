#!/usr/bin/env python3
"""Markdown table from evaluate.py --json results.

  .venv/bin/python training/report.py --teacher teacher.json "ToP 2x=top-2x.json" ...
"""
import argparse
import json


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True, help="evaluate.py JSON of the unpruned teacher")
    ap.add_argument("rows", nargs="+", help="label=path.json")
    ap.add_argument("--out", help="also write the table here")
    args = ap.parse_args(argv)
    with open(args.teacher) as f:
        teacher = json.load(f)
    ta = teacher["accuracy"]
    lines = ["| model / schedule | dev accuracy | % of teacher | real-length FLOPs | reduction (real) "
             "| reduction vs padded to 64 | keep ratios |",
             "|---|---|---|---|---|---|---|",
             f"| teacher (unpruned) | {ta * 100:.2f} | 100.0 | 100.0% | 1.00x | "
             f"{teacher['flops_reduction_vs_padded']:.2f}x | - |"]
    for row in args.rows:
        label, path = row.split("=", 1)
        with open(path) as f:
            r = json.load(f)
        kr = ", ".join(f"{x:.3g}" for x in r["keep_ratios"]) if r.get("keep_ratios") else "unpruned"
        lines.append(f"| {label} | {r['accuracy'] * 100:.2f} | {r['accuracy'] / ta * 100:.1f} | "
                     f"{r['flops_fraction'] * 100:.1f}% | {r['flops_reduction']:.2f}x | "
                     f"{r['flops_reduction_vs_padded']:.2f}x | {kr if kr == 'unpruned' else '[' + kr + ']'} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
