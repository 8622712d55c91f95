#!/usr/bin/env python3
"""Turns bench/engine_bench JSON into the markdown table and the plot in docs/.

  .venv/bin/python tools/bench_report.py --json docs/bench/engine.json --md docs/bench/engine.md \
      --plot docs/bench/engine.png --command "scripts/bench.sh"
  .venv/bin/python tools/bench_report.py --profile docs/bench/profile-{fp32,bf16,int8}.json \
      --md docs/bench/profile.md --command "scripts/bench-profile.sh"
"""

import argparse
import json


def table(rows):
    out = ["| workload | threads | budget | seqs | time (ms) | FLOPs fraction | GFLOP/s | speedup | FLOPs reduction | speedup / reduction |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["budget"] == "mixed":
            continue
        out.append("| {workload} | {threads} | {budget:g} | {sequences} | {ms:.1f} | {ff:.3f} | {gf:.1f} | {sp} | {red} | {ratio} |".format(
            workload=r["workload"], threads=r["threads"], budget=r["budget"], sequences=r["sequences"],
            ms=r["seconds"] * 1e3, ff=r["flops_fraction"], gf=r["gflops_per_s"],
            sp=f'{r["speedup"]:.2f}x' if "speedup" in r else "",
            red=f'{r["flops_reduction"]:.2f}x' if "flops_reduction" in r else "",
            ratio=f'{r["speedup_over_reduction"]:.2f}' if "speedup_over_reduction" in r else ""))
    out += ["", "Mixed batches (sequence i gets budget i mod 4) against the sum of their budget groups run alone:", "",
            "| workload | threads | mixed (ms) | sum of groups (ms) | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        if r["budget"] != "mixed":
            continue
        out.append(f'| {r["workload"]} | {r["threads"]} | {r["seconds"] * 1e3:.1f} | '
                   f'{r["sum_of_groups_seconds"] * 1e3:.1f} | {r["mixed_over_groups"]:.3f} |')
    return "\n".join(out)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = {}
    for r in rows:
        if r["budget"] == "mixed":
            continue
        series.setdefault((r["workload"], r["threads"]), []).append(r)
    for (workload, threads), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["budget"])
        label = f"{workload}, {threads} thr"
        axes[0].plot([r["budget"] for r in rs], [r["seconds"] * 1e3 for r in rs], marker="o", label=label)
        axes[1].plot([r["budget"] for r in rs], [r["flops_fraction"] for r in rs], marker="o", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="budget", ylabel="batch latency (ms)", title="Latency vs budget")
    axes[1].set(xscale="log", yscale="log", xlabel="budget", ylabel="FLOPs used / unpruned", title="FLOPs vs budget")
    axes[1].plot([0.1, 1], [0.1, 1], color="grey", linestyle=":", label="budget")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


OP_ORDER = ["embeddings", "gemm_qkv", "gemm_attn_out", "gemm_ffn_in", "gemm_ffn_out", "attn_scores",
            "softmax", "attn_context", "importance", "layernorm", "activation", "quantize",
            "dequantize", "convert_bf16", "prune_gather", "heads", "other"]


def profile_md(paths, command):
    """One table per workload and budget: each op's ms per run in every precision profiled."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    first = runs[0]
    out = [f"Made by `{command}` on {first.get('cpu', '?')} (oneDNN ISA {first.get('isa', '?')}, "
           f"OpenMP {first.get('openmp', {})}), model `{first['model']}`. Times are exclusive, in ms "
           "per run, from runs with the op timers on (separate from the timed runs of "
           "engine.md). \"dense GEMMs\" are the four projections of each layer.", ""]
    keys = []
    for r in first["rows"]:
        if r.get("budget") != "mixed" and "profile" in r:
            keys.append((r["workload"], r["threads"], r["budget"]))
    for workload, threads, budget in keys:
        cols = []
        for run in runs:
            row = next((r for r in run["rows"] if r.get("budget") == budget and
                        r["workload"] == workload and r["threads"] == threads and "profile" in r), None)
            cols.append((run["precision"], row))
        out += [f"### {workload}, {threads} threads, budget {budget:g}", "",
                "| op | " + " | ".join(p for p, _ in cols) + " |",
                "|---|" + "---|" * len(cols)]
        for op in OP_ORDER:
            cells = []
            for _, row in cols:
                v = row["profile"]["ops"].get(op) if row else None
                cells.append(f"{v * 1e3:.1f}" if v is not None else "-")
            if any(c != "-" for c in cells):
                out.append(f"| {op} | " + " | ".join(cells) + " |")
        out.append("| **total** | " + " | ".join(
            f"**{row['profile']['seconds_per_run'] * 1e3:.1f}**" if row else "-" for _, row in cols) + " |")
        out.append("| share outside dense GEMMs | " + " | ".join(
            f"{100 * row['profile']['share_outside_dense_gemms']:.1f}%" if row else "-"
            for _, row in cols) + " |")
        out.append("| share outside all GEMMs | " + " | ".join(
            f"{100 * row['profile']['share_outside_gemms']:.1f}%" if row else "-"
            for _, row in cols) + " |")
        out.append("")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--profile", nargs="+", help="engine_bench --profile JSON files (one per "
                   "precision): write the per-op table instead")
    p.add_argument("--json")
    p.add_argument("--md", required=True)
    p.add_argument("--plot")
    p.add_argument("--command", default="scripts/bench.sh")
    args = p.parse_args()
    if args.profile:
        with open(args.md, "w") as f:
            f.write(profile_md(args.profile, args.command))
        return
    if not args.json:
        p.error("--json is required (or --profile)")
    with open(args.json) as f:
        data = json.load(f)
    text = [f"Made by `{args.command}` (model: `{data['model']}`, schedule: {data['schedule']}, "
            f"placement {data['placement']}).", "", table(data["rows"]), ""]
    with open(args.md, "w") as f:
        f.write("\n".join(text))
    if args.plot:
        plot(data["rows"], args.plot)


if __name__ == "__main__":
    main()
