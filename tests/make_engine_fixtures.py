#!/usr/bin/env python3
"""Makes the engine tests' models and expected outputs (a ctest fixture).

For each case: a random model directory (tools/gen_model.py) and reference.jsonl, one line per input
of a batch mixing lengths 1..512 (one 512-token sequence among many short ones), with the float64
PyTorch reference's outputs (tools/reference_bert.py). Skips a case whose files are up to date.
"""

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import gen_model  # noqa: E402
import reference_bert  # noqa: E402
import reference_pruning  # noqa: E402

# name: gen_model.py arguments
CASES = {
    "cls-f32": ["--task", "cls", "--dtype", "f32", "--seed", "11"],
    "cls-f16": ["--task", "cls", "--dtype", "f16", "--seed", "12"],
    "cls-bf16": ["--task", "cls", "--dtype", "bf16", "--seed", "13"],
    "qa-f32": ["--task", "qa", "--dtype", "f32", "--seed", "21"],
    "qa-f16": ["--task", "qa", "--dtype", "f16", "--seed", "22"],
    "qa-bf16": ["--task", "qa", "--dtype", "bf16", "--seed", "23"],
    "cls-gelu-tanh": ["--task", "cls", "--act", "gelu_new", "--seed", "31", "--labels", "a,b,c"],
    "cls-relu": ["--task", "cls", "--act", "relu", "--seed", "32", "--layers", "3", "--heads", "4"],
}

LENGTHS = [1, 2, 3, 5, 7, 7, 7, 8, 13, 17, 31, 64, 64, 64, 100, 128, 128, 200, 255, 300, 384, 511, 512, 9]

# Version of this script's output; bump to force regeneration.
VERSION = 2

# Pruned fixtures: model case -> placements; a random valid plan per sequence.
PRUNED = {"cls-f32": ["after_mha", "between_layers"], "qa-f32": ["after_mha", "between_layers"],
          "cls-relu": ["after_mha"]}


def random_plan(rng, n, layers):
    kept, tokens = [], n
    for _ in range(layers):
        tokens = max(1, min(tokens, int(round(tokens * rng.uniform(0.3, 1.0)))))
        kept.append(tokens)
    return kept


def make_inputs(seed, vocab_size):
    rng = np.random.default_rng(seed)
    rows = []
    for n in LENGTHS:
        ids = rng.integers(1000, vocab_size, size=n).tolist()
        ids[0] = 101
        if n > 1:
            ids[-1] = 102
        split = int(rng.integers(1, n + 1))
        types = [0] * split + [1] * (n - split)
        rows.append({"input_ids": ids, "token_type_ids": types})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--vocab", required=True)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, gen_args in CASES.items():
        d = os.path.join(args.out, name)
        stamp = os.path.join(d, "fixture.json")
        want = {"version": VERSION, "args": gen_args, "lengths": LENGTHS}
        if os.path.exists(stamp):
            with open(stamp) as f:
                if json.load(f) == want:
                    continue
        gen_model.main(["--out", d, "--vocab", args.vocab, *gen_args])
        model = reference_bert.load_model(d)
        with open(os.path.join(d, "config.json")) as f:
            vocab_size = json.load(f)["vocab_size"]
        with open(os.path.join(d, "reference.jsonl"), "w") as f:
            for row in make_inputs(sum(map(ord, name)), vocab_size):
                row.update(model.forward(row["input_ids"], row["token_type_ids"]))
                f.write(json.dumps(row) + "\n")
        for placement in PRUNED.get(name, []):
            rng = np.random.default_rng(sum(map(ord, name + placement)))
            with open(os.path.join(d, f"pruned-{placement}.jsonl"), "w") as f:
                for row in make_inputs(sum(map(ord, placement)), vocab_size):
                    row["kept"] = random_plan(rng, len(row["input_ids"]), model.num_layers)
                    row.update(reference_pruning.forward_pruned(
                        model, row["input_ids"], row["token_type_ids"], row["kept"], placement))
                    f.write(json.dumps(row) + "\n")
        with open(stamp, "w") as f:
            json.dump(want, f)
        print(f"made {d}")


if __name__ == "__main__":
    main()
