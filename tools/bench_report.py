#!/usr/bin/env python3
"""Turns bench/engine_bench JSON into the markdown table and the plot in docs/.

  .venv/bin/python tools/bench_report.py --json docs/bench/engine.json --md docs/bench/engine.md \
      --plot docs/bench/engine.png --command "scripts/bench.sh"
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


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--plot")
    p.add_argument("--command", default="scripts/bench.sh")
    args = p.parse_args()
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
