#!/usr/bin/env python3
"""Same-run peers for the engine benchmark: PyTorch (fp32, bf16) and ONNX Runtime (fp32, int8) on
the same BERT model and inputs as topserve's engine_bench, every row measured in one run.

  .venv/bin/python bench/peers/peers.py --model build-bench/models/bert-base-cls \
      --out build-bench/peers --threads 2 --repeats 5 --sst2 ../shared/data/sst2/dev.tsv \
      --engine-bench build-bench/bench/engine_bench --json docs/bench/peers.json

Workloads: 8 x 128 random ids, 1 x 128, 1 x 384, and the first 128 SST-2 dev sentences at their
real lengths (tokenized by Hugging Face's BertTokenizerFast from the model's vocab.txt).

Peers run as their users run them:
- PyTorch: `transformers`' BertForSequenceClassification.from_pretrained(model dir), eval, no_grad,
  torch.set_num_threads(t); bf16 is the same model cast with .to(torch.bfloat16).
- ONNX Runtime (PyPI's onnxruntime, CPU provider): the standard BERT graph (inputs input_ids,
  attention_mask, token_type_ids) exported from that model with torch.onnx.export, then
  onnxruntime.transformers.optimizer.optimize_model(model_type="bert") for its fused BERT kernels
  (the script checks the optimized graph holds Attention, SkipLayerNormalization, EmbedLayerNormalization
  and a fused Gelu, one per layer), and onnxruntime.quantization.quantize_dynamic on the optimized
  graph for int8 (QInt8 weights, per-tensor: its defaults). Sessions: intra-op threads = t,
  sequential, graph optimization ORT_ENABLE_ALL.
- On the SST-2 mix a peer runs in its best mode: the faster of one sentence per call and batches of
  8 sentences sorted by length, padded to the batch's longest with an attention mask.
- topserve (--engine-bench): engine_bench per workload and precision at budgets 1, 0.5, 0.25,
  0.125; its SST-2 row is one packed batch of the 128 sentences (no padding).

Prints the CPU model; --json/--md write the rows.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

# The server's OpenMP thread model (server/main.cc), for torch and engine_bench alike; set before
# torch loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PRECISIONS = ("fp32", "bf16", "int8")
BATCH_OF_SORTED = 8


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def padded(batch_ids):
    """[[ids]] -> (input_ids, attention_mask, token_type_ids) as int64 arrays, right-padded."""
    n = max(len(x) for x in batch_ids)
    ids = np.zeros((len(batch_ids), n), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, x in enumerate(batch_ids):
        ids[i, :len(x)] = x
        mask[i, :len(x)] = 1
    return ids, mask, np.zeros_like(ids)


def make_workloads(model_dir, sst2, sst2_limit, vocab_size):
    rng = np.random.default_rng(7)
    work = {}
    for name, batch, length in (("len128", 8, 128), ("1x128", 1, 128), ("1x384", 1, 384)):
        ids = rng.integers(1000, min(29000, vocab_size), size=(batch, length))
        ids[:, 0], ids[:, -1] = 101, 102
        work[name] = [list(map(int, row)) for row in ids]
    if sst2:
        from transformers import BertTokenizerFast
        tok = BertTokenizerFast.from_pretrained(model_dir)
        texts = []
        with open(sst2) as f:
            next(f)  # header
            for line in f:
                texts.append(line.rsplit("\t", 1)[0])
                if len(texts) == sst2_limit:
                    break
        work["sst2-dev"] = [tok(t, truncation=True, max_length=128)["input_ids"] for t in texts]
    return work


def calls_for(seqs, mode):
    """The padded batches one pass over `seqs` makes in `mode`."""
    if mode == "as one batch":
        return [padded(seqs)]
    if mode == "one-by-one":
        return [padded([s]) for s in seqs]
    order = sorted(seqs, key=len)  # sorted batches: padding only to the batch's longest
    return [padded(order[i:i + BATCH_OF_SORTED]) for i in range(0, len(order), BATCH_OF_SORTED)]


def modes_for(name):
    if name == "sst2-dev":
        return ["one-by-one", f"sorted batches of {BATCH_OF_SORTED}"]
    return ["as one batch"]


def time_peer(run, work, repeats):
    """Returns {workload: (seconds, mode)}: each workload in its peer's best mode."""
    out = {}
    for name, seqs in work.items():
        best = None
        for mode in modes_for(name):
            calls = calls_for(seqs, mode)
            s = median_time(lambda: [run(*c) for c in calls], repeats)
            if best is None or s < best[0]:
                best = (s, mode)
        out[name] = best
    return out


def export_onnx(model, path, hidden, heads, layers):
    """Standard BERT ONNX graph + ORT's BERT optimizer; returns (optimized path, fused op counts)."""
    import onnx
    from onnxruntime.transformers import optimizer
    ids, mask, types = (torch.from_numpy(a) for a in padded([[101, 2000, 2001, 102]] * 2))
    raw = path.replace(".onnx", "-raw.onnx")
    with torch.no_grad():
        torch.onnx.export(model, (ids, mask, types), raw,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["logits"], opset_version=14, do_constant_folding=True,
                          dynamic_axes={k: {0: "batch", 1: "sequence"}
                                        for k in ("input_ids", "attention_mask", "token_type_ids")})
    opt = optimizer.optimize_model(raw, model_type="bert", num_heads=heads, hidden_size=hidden,
                                   opt_level=1)
    opt.save_model_to_file(path)
    counts = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    want = {"Attention": layers, "SkipLayerNormalization": 2 * layers, "EmbedLayerNormalization": 1}
    gelu = counts.get("BiasGelu", 0) + counts.get("FastGelu", 0) + counts.get("Gelu", 0)
    missing = [f"{op} x{n} (has {counts.get(op, 0)})" for op, n in want.items()
               if counts.get(op, 0) < n]
    if gelu < layers:
        missing.append(f"a fused Gelu per layer (has {gelu})")
    if missing:
        raise SystemExit(f"ORT's optimizer did not fuse the BERT graph: missing {', '.join(missing)}; "
                         f"ops: {counts}")
    return path, {k: v for k, v in counts.items() if v}


def ort_runner(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def run(ids, mask, types):
        return sess.run(["logits"], {"input_ids": ids, "attention_mask": mask,
                                     "token_type_ids": types})[0]
    return run


def torch_runner(model):
    def run(ids, mask, types):
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                         token_type_ids=torch.from_numpy(types)).logits.float().numpy()
    return run


def engine_rows(engine_bench, model, out, work, threads, repeats, sst2, sst2_limit, precisions,
                budgets="1,0.5,0.25,0.125", extra=()):
    rows = []
    for precision in precisions:
        for name, args in (("len128", ["--lengths", "128", "--batch", "8"]),
                           ("1x128", ["--lengths", "128", "--batch", "1"]),
                           ("1x384", ["--lengths", "384", "--batch", "1"]),
                           ("sst2-dev", ["--lengths", "", "--sst2", sst2 or "",
                                         "--sst2-limit", str(sst2_limit)])):
            if name not in work:
                continue
            path = os.path.join(out, f"engine-{precision}-{name}.json")
            proc = subprocess.run([engine_bench, "--model", model, *args,
                                   "--budgets", budgets, "--threads", threads,
                                   "--repeats", str(repeats), "--precision", precision,
                                   "--json", path, *extra],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"engine_bench failed: {proc.stderr.strip()}")
            with open(path) as f:
                result = json.load(f)
            for r in result["rows"]:
                if r["budget"] == "mixed" or r["workload"] not in ("len128", "len384", "sst2-dev"):
                    continue
                rows.append({"peer": f"topserve-{result.get('precision', precision)} budget "
                                     f"{r['budget']:g}",
                             "workload": name, "threads": r["threads"], "seconds": r["seconds"],
                             "flops_fraction": r["flops_fraction"], "mode": "packed batch",
                             "isa": result.get("isa", "")})
    return rows


def interleaved_pairs(engine_bench, model, out, work, runners, pairs, repeats, sst2, sst2_limit,
                      precisions):
    """The machine's speed drifts by 10-30% over minutes, so rows timed minutes apart can mislead
    even in one run. Here each pair times a peer and then topserve back to back (8 x 128 and the
    SST-2 mix, budget 1, 2 threads), `pairs` times, and reports every pair's ratio and the median:
    topserve-int8 against ort-int8, topserve-fp32 and topserve-bf16 against ort-fp32, for the
    precisions asked for; each labelled with the precision engine_bench says ran (bf16 runs fp32
    where the engine measured bf16 slower)."""
    against = {"int8": "ort-int8", "fp32": "ort-fp32", "bf16": "ort-fp32"}
    made = dict(runners)
    result = []
    for wl in ("len128", "sst2-dev"):
        if wl not in work:
            continue
        for precision, peer in against.items():
            if peer not in made or precision not in precisions:
                continue
            run = made[peer](2)
            label = f"topserve-{precision}"
            ratios = []
            for _ in range(pairs):
                peer_s, _mode = time_peer(run, {wl: work[wl]}, repeats)[wl]
                ours = engine_rows(engine_bench, model, out, {wl: work[wl]}, "2", repeats, sst2,
                                   sst2_limit, [precision], budgets="1",
                                   extra=["--skip-accuracy"])  # once, in the main rows, is enough
                ours_s = ours[0]["seconds"]
                label = ours[0]["peer"].split(" budget")[0]
                ratios.append(peer_s / ours_s)
                print(f"pair {wl} {peer} {peer_s * 1e3:.1f} ms / {label} "
                      f"{ours_s * 1e3:.1f} ms = {peer_s / ours_s:.2f}x", file=sys.stderr)
            result.append({"workload": wl, "peer": peer, "topserve": label,
                           "ratios": ratios, "median": float(np.median(ratios))})
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a BertForSequenceClassification directory")
    p.add_argument("--out", required=True, help="work directory (ONNX files, results)")
    p.add_argument("--threads", default="2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sst2", help="SST-2 dev.tsv: adds the real-length workload")
    p.add_argument("--sst2-limit", type=int, default=128)
    p.add_argument("--workloads", help="comma list to run (default: all)")
    p.add_argument("--skip-ort", action="store_true", help="PyTorch only")
    p.add_argument("--skip-bf16", action="store_true", help="no PyTorch bf16 row")
    p.add_argument("--peers", help="comma list of peers to time (default: all): pytorch-fp32, "
                   "pytorch-bf16, ort-fp32, ort-int8")
    p.add_argument("--engine-bench", help="engine_bench binary: time topserve in the same run")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help="topserve precisions to run (engine_bench --precision)")
    p.add_argument("--pairs", type=int, default=0, help="also time N back-to-back pairs of each "
                   "peer and topserve at budget 1 (8 x 128, SST-2), reporting each pair's ratio")
    p.add_argument("--json", help="write the combined results here")
    p.add_argument("--md", help="write a markdown table here")
    p.add_argument("--command", default="", help="command line to cite in the markdown")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    threads = [int(t) for t in args.threads.split(",")]

    from transformers import BertForSequenceClassification
    model = BertForSequenceClassification.from_pretrained(args.model).eval()
    cfg = model.config
    work = make_workloads(args.model, args.sst2, args.sst2_limit, cfg.vocab_size)
    if args.workloads:
        keep = set(args.workloads.split(","))
        unknown = keep - set(work)
        if unknown:
            p.error(f"--workloads: unknown {sorted(unknown)} (known: {', '.join(work)}; sst2-dev "
                    "needs --sst2)")
        work = {k: v for k, v in work.items() if k in keep}
    print(f"CPU: {cpu_model()}; torch {torch.__version__}", file=sys.stderr)

    rows = []
    check = padded(work[next(iter(work))])
    expected = torch_runner(model)(*check)
    diffs = {}
    runners = [("pytorch-fp32", lambda t: torch_runner(model))]
    if not args.skip_bf16:
        bf16 = BertForSequenceClassification.from_pretrained(args.model).eval().to(torch.bfloat16)
        runners.append(("pytorch-bf16", lambda t: torch_runner(bf16)))
    ort_info = {}
    if not args.skip_ort:
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
        fp32, ops = export_onnx(model, os.path.join(args.out, "model-fp32.onnx"),
                                cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers)
        int8 = os.path.join(args.out, "model-int8.onnx")
        # The optimized graph's com.microsoft ops carry no inferred output types, so the
        # quantizer is told that they are float (its own advice for this case).
        import onnx
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        ort_info = {"version": onnxruntime.__version__, "fused_ops_fp32": ops}
        runners += [("ort-fp32", lambda t: ort_runner(fp32, t)),
                    ("ort-int8", lambda t: ort_runner(int8, t))]
    if args.peers:
        runners = [(peer, make) for peer, make in runners if peer in args.peers.split(",")]
    for peer, make in runners:
        for t in threads:
            torch.set_num_threads(t)
            run = make(t)
            diffs[peer] = float(np.max(np.abs(run(*check) - expected)))
            for name, (s, mode) in time_peer(run, work, args.repeats).items():
                rows.append({"peer": peer, "workload": name, "threads": t, "seconds": s,
                             "mode": mode})
                print(f"{peer:13s} {name:9s} threads={t} {s * 1e3:8.1f} ms  ({mode})",
                      file=sys.stderr)
    if "ort-fp32" in diffs and diffs["ort-fp32"] > 1e-3:
        raise SystemExit(f"ONNX Runtime fp32 logits differ from PyTorch by {diffs['ort-fp32']}")
    result = {"cpu": cpu_model(), "torch": torch.__version__, "onnxruntime": ort_info,
              "model": args.model, "rows": rows, "max_abs_logit_diff_vs_pytorch_fp32": diffs,
              "workloads": {k: {"sequences": len(v), "tokens": sum(map(len, v))}
                            for k, v in work.items()}}
    if args.engine_bench:
        rows += engine_rows(args.engine_bench, args.model, args.out, work, args.threads,
                            args.repeats, args.sst2, args.sst2_limit, args.precisions.split(","))
        isas = {r["isa"] for r in rows if r.get("isa")}
        result["onednn_isa"] = ", ".join(sorted(isas))
    if args.pairs and args.engine_bench:
        result["pairs"] = interleaved_pairs(args.engine_bench, args.model, args.out, work, runners,
                                            args.pairs, args.repeats, args.sst2, args.sst2_limit,
                                            args.precisions.split(","))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
            f.write("\n")
    if args.md:
        with open(args.md, "w") as f:
            f.write(markdown(result, args.command))
    print(json.dumps(result, indent=1))
    return 0


def markdown(result, command):
    rows = result["rows"]
    wl = result["workloads"]
    lines = [f"Made by `{command}` on {result['cpu']}"
             + (f" (oneDNN ISA {result['onednn_isa']})" if result.get("onednn_isa") else "")
             + f", model `{result['model']}`, median of the repeats, every row measured in the same "
             "run (runs drift 10-30% between passes, so compare within this table). ONNX Runtime "
             f"{result['onnxruntime'].get('version', '-')} on its optimizer's fused BERT graph "
             f"({', '.join(f'{k} {v}' for k, v in sorted(result['onnxruntime'].get('fused_ops_fp32', {}).items()) if k in ('Attention', 'SkipLayerNormalization', 'EmbedLayerNormalization', 'BiasGelu', 'FastGelu'))}); "
             f"torch {result['torch']}.", ""]
    for name, info in wl.items():
        for t in sorted({r["threads"] for r in rows}):
            sel = [r for r in rows if r["workload"] == name and r["threads"] == t]
            if not sel:
                continue
            base = {r["peer"]: r["seconds"] for r in sel}
            lines += [f"### {name}: {info['sequences']} sequences, {info['tokens']} tokens, "
                      f"{t} thread{'s' if t > 1 else ''}", "",
                      "| system | mode | time (ms) | vs ORT fp32 | vs ORT int8 | vs PyTorch fp32 |",
                      "|---|---|---|---|---|---|"]
            for r in sel:
                cells = [f"{base[ref] / r['seconds']:.2f}x" if ref in base else "-"
                         for ref in ("ort-fp32", "ort-int8", "pytorch-fp32")]
                lines.append(f"| {r['peer']} | {r['mode']} | {r['seconds'] * 1e3:.1f} | "
                             + " | ".join(cells) + " |")
            lines.append("")
    if result.get("pairs"):
        lines += ["### Back-to-back pairs, budget 1, 2 threads", "",
                  "Each pair times the peer and then topserve right after it, so the machine's drift "
                  "between rows does not decide the ratio.", "",
                  "| workload | peer / topserve | each pair (peer time / topserve time) | median |",
                  "|---|---|---|---|"]
        for pr in result["pairs"]:
            lines.append(f"| {pr['workload']} | {pr['peer']} / {pr['topserve']} | "
                         + ", ".join(f"{r:.2f}x" for r in pr["ratios"]) + f" | **{pr['median']:.2f}x** |")
        lines.append("")
    diffs = result.get("max_abs_logit_diff_vs_pytorch_fp32", {})
    lines += ["Ratios are speedups (peer time / row time; above 1 = the row is faster). Max abs "
              "logit difference from PyTorch fp32 on the first workload: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
