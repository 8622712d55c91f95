#!/usr/bin/python3
"""Same-run peers for the engine benchmark: PyTorch fp32 and ONNX Runtime fp32 / int8 (dynamic
quantization) on the same bert-base-shaped model and batch as build-bench's engine_bench.

  /usr/bin/python3 bench/peers/peers.py --model build-bench/models/bert-base-cls \
      --out build-bench/peers --batch 8 --length 128 --threads 1,2 --repeats 5

Steps: (1) PyTorch: the training model (training/modeling.py, nn.Linear/nn.LayerNorm, fp32) loaded
from the model directory, timed under torch.no_grad() with torch.set_num_threads(t). (2) ONNX: the
same module exported with torch.onnx.export (opset 13) -> model-fp32.onnx; model-int8.onnx is the
dynamic-quantization rewrite ONNX Runtime's quantize_dynamic makes (not installable here: no pip),
done by hand: every MatMul with a constant weight becomes DynamicQuantizeLinear(x) ->
MatMulInteger(x_q, W_q, x_zp, 0) -> Cast -> Mul(x_scale * W_scale), W quantized per tensor to
symmetric int8 (quantize_dynamic's defaults), the pattern ORT's optimizer fuses into its
DynamicQuantizeMatMul / MatMulIntegerToFloat kernels. (3) bench/peers/ort.mjs runs both files on
onnxruntime-node (CPU provider, intra-op threads = t, graph optimisation all).
(4) with --engine-bench, topserve's engine_bench on the same model and batch, fp32 and int8, at
budgets 1, 0.5, 0.25, 0.125.
Prints JSON rows {peer, threads, seconds} and checks the ONNX outputs against PyTorch.
"""
import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch starts its OpenMP pool

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "training"))
import common  # noqa: E402  (training/common.py)


class Wrapped(torch.nn.Module):
    """ids [B, n] -> logits; every token present (the benchmark batch has no padding)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        presence = torch.ones(ids.shape, dtype=torch.float32)
        logits, _, _ = self.model(ids, presence)
        return logits


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def quantize_dynamic(src, dst):
    """MatMul(x, W const) -> DynamicQuantizeLinear + MatMulInteger + Cast + Mul (int8 weights,
    per-tensor symmetric scale), as onnxruntime.quantization.quantize_dynamic does by default."""
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    model = onnx.load(src)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        # int8 weights, symmetric (zero point 0): quantize_dynamic's default (QInt8,
        # WeightSymmetric), the u8 x s8 pairing VNNI kernels run.
        scale = float(np.abs(w).max()) / 127.0 or 1.0
        zero = 0
        wq = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        p = f"{node.name or node.output[0]}_q"
        graph.initializer.extend([
            numpy_helper.from_array(wq, f"{p}_W"),
            numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{p}_Ws"),
            numpy_helper.from_array(np.array(zero, dtype=np.int8), f"{p}_Wz"),
        ])
        nodes += [
            helper.make_node("DynamicQuantizeLinear", [node.input[0]],
                             [f"{p}_x", f"{p}_xs", f"{p}_xz"], name=f"{p}_dql"),
            helper.make_node("MatMulInteger", [f"{p}_x", f"{p}_W", f"{p}_xz", f"{p}_Wz"],
                             [f"{p}_i32"], name=f"{p}_mmi"),
            helper.make_node("Cast", [f"{p}_i32"], [f"{p}_f"], to=TensorProto.FLOAT,
                             name=f"{p}_cast"),
            helper.make_node("Mul", [f"{p}_xs", f"{p}_Ws"], [f"{p}_s"], name=f"{p}_scale"),
            helper.make_node("Mul", [f"{p}_f", f"{p}_s"], [node.output[0]], name=f"{p}_out"),
        ]
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    return rewritten


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="work directory (ONNX files, ids, results)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-ort", action="store_true", help="PyTorch only")
    p.add_argument("--engine-bench", help="build-bench/bench/engine_bench: time topserve in the "
                   "same run, budgets 1, 0.5, 0.25, 0.125")
    p.add_argument("--json", help="write the combined results here")
    p.add_argument("--md", help="write a markdown table here")
    p.add_argument("--command", default="", help="command line to cite in the markdown")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    threads = [int(t) for t in args.threads.split(",")]

    model, config = common.load_model(args.model)
    model.eval()
    net = Wrapped(model).eval()
    rng = np.random.default_rng(7)
    ids = rng.integers(1000, config["vocab_size"], size=(args.batch, args.length))
    ids[:, 0] = 101
    ids_t = torch.from_numpy(ids)
    rows = []
    with torch.no_grad():
        expected = net(ids_t).numpy()
        for t in threads:
            torch.set_num_threads(t)
            s = median_time(lambda: net(ids_t), args.repeats)
            rows.append({"peer": "pytorch-fp32", "threads": t, "seconds": s})
            print(f"pytorch-fp32  threads={t}  {s * 1e3:8.1f} ms", file=sys.stderr)
    if args.skip_ort:
        print(json.dumps({"rows": rows}, indent=1))
        return 0

    fp32 = os.path.join(args.out, "model-fp32.onnx")
    int8 = os.path.join(args.out, "model-int8.onnx")
    with torch.no_grad():
        torch.onnx.export(net, (ids_t,), fp32, input_names=["ids"], output_names=["logits"],
                          dynamic_axes={"ids": {0: "batch", 1: "length"}}, opset_version=13)
    n = quantize_dynamic(fp32, int8)
    print(f"int8: {n} MatMuls quantized", file=sys.stderr)
    ids_path = os.path.join(args.out, "ids.json")
    with open(ids_path, "w") as f:
        json.dump({"ids": ids.tolist()}, f)
    proc = subprocess.run(["node", os.path.join(HERE, "ort.mjs"), "--ids", ids_path,
                           "--threads", args.threads, "--repeats", str(args.repeats),
                           fp32, int8], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"ort.mjs failed:\n{proc.stderr}")
    sys.stderr.write(proc.stderr)
    ort = json.loads(proc.stdout)
    for r in ort["rows"]:
        rows.append({"peer": r["peer"], "threads": r["threads"], "seconds": r["seconds"]})
    # The exported graph computes what PyTorch does (fp32 closely, int8 roughly).
    diffs = {}
    for name, logits in ort["logits"].items():
        diffs[name] = float(np.max(np.abs(np.asarray(logits) - expected)))
    if diffs["ort-fp32"] > 1e-3:
        raise SystemExit(f"ONNX fp32 logits differ from PyTorch by {diffs['ort-fp32']}")
    result = {"rows": rows, "max_abs_logit_diff_vs_pytorch": diffs, "batch": args.batch,
              "length": args.length, "model": args.model}
    if args.engine_bench:
        for precision in ("fp32", "int8"):
            out = os.path.join(args.out, f"engine-{precision}.json")
            subprocess.run([args.engine_bench, "--model", args.model, "--lengths", str(args.length),
                            "--budgets", "1,0.5,0.25,0.125", "--threads", args.threads,
                            "--batch", str(args.batch), "--repeats", str(args.repeats),
                            "--precision", precision, "--json", out],
                           check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                for r in json.load(f)["rows"]:
                    if r["budget"] == "mixed":
                        continue
                    rows.append({"peer": f"topserve-{precision} budget {r['budget']:g}",
                                 "threads": r["threads"], "seconds": r["seconds"],
                                 "flops_fraction": r["flops_fraction"]})
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
    lines = [f"Made by `{command}`: batch {result['batch']} x {result['length']} tokens, "
             f"bert-base shape (`{result['model']}`), median of the repeats, every row measured in "
             "the same run (runs drift 10-25% between passes, so compare within this table).", "",
             "| system | threads | time (ms) | vs PyTorch fp32 | vs ORT fp32 | vs ORT int8 |",
             "|---|---|---|---|---|---|"]
    for t in sorted({r["threads"] for r in rows}):
        base = {r["peer"]: r["seconds"] for r in rows if r["threads"] == t}
        for r in (r for r in rows if r["threads"] == t):
            cells = []
            for ref in ("pytorch-fp32", "ort-fp32", "ort-int8"):
                cells.append(f"{base[ref] / r['seconds']:.2f}x" if ref in base else "-")
            lines.append(f"| {r['peer']} | {t} | {r['seconds'] * 1e3:.1f} | " + " | ".join(cells) + " |")
    diffs = result.get("max_abs_logit_diff_vs_pytorch", {})
    lines += ["", "Ratios are speedups (peer time / row time; above 1 = the row is faster). "
              "Max abs logit difference from PyTorch on the benchmark batch: " +
              ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
