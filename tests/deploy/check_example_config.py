#!/usr/bin/env python3
"""deploy/config.example.yaml says "the values below are the defaults": check that it is so.

  .venv/bin/python tests/deploy/check_example_config.py --server build/server/topserve-server

Starts the server twice with --check (validate, load the model, print the effective config,
exit): once from the example config, once from flags alone with the same model
(--model sst2=models/sst2-small). The two effective configs must be equal, key by key, so a
server behaves the same (default budget included) whichever way it was started. Run from the
repository root (the example's model path is relative to it).
"""
import argparse
import os
import subprocess
import sys

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
EXAMPLE = "deploy/config.example.yaml"


def effective(server, args):
    p = subprocess.run([server, *args, "--check"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_WAIT_POLICY="passive"))
    if p.returncode != 0:
        sys.exit(f"FAIL {' '.join(args)} --check: exit {p.returncode}: {p.stderr.strip()}")
    text = p.stderr.split("effective config:\n", 1)
    if len(text) != 2:
        sys.exit(f"FAIL {' '.join(args)} --check printed no effective config: {p.stderr[:300]}")
    # The YAML runs until the first line that is not part of it ("topserve-server: ...").
    lines = []
    for line in text[1].splitlines():
        if line.startswith("topserve-server"):
            break
        lines.append(line)
    return yaml.safe_load("\n".join(lines))


def diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} in {EXAMPLE}, {b!r} from flags"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", required=True)
    args = p.parse_args()
    with open(os.path.join(ROOT, EXAMPLE)) as f:
        example = yaml.safe_load(f)
    model = example["models"][0]
    from_file = effective(args.server, ["--config", EXAMPLE])
    from_flags = effective(args.server, ["--model", f"{model['name']}={model['path']}"])
    problems = diff(from_file, from_flags)
    for d in problems:
        print(f"FAIL {d}")
    if problems:
        print(f"{EXAMPLE} must show the defaults (or say why a value differs): "
              f"{len(problems)} difference(s)")
        return 1
    budget = from_file["models"][0]["default_budget"]
    print(f"ok   {EXAMPLE} and flags give the same effective config "
          f"(default_budget {budget} for model {model['name']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
