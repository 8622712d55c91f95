#!/usr/bin/env python3
"""Writes deploy/k8s/prometheusrule.yaml from deploy/prometheus/rules.yml (the one source of the rules).

  .venv/bin/python tests/deploy/gen_prometheusrule.py          # rewrite the manifest
  .venv/bin/python tests/deploy/gen_prometheusrule.py --check  # exit 1 if it is out of date

The check also parses both files and compares the rule groups as data (test deploy_rules_in_sync).
"""

import argparse
import os
import sys

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RULES = os.path.join(ROOT, "deploy", "prometheus", "rules.yml")
MANIFEST = os.path.join(ROOT, "deploy", "k8s", "prometheusrule.yaml")

HEADER = """---
# GENERATED from deploy/prometheus/rules.yml by tests/deploy/gen_prometheusrule.py: edit rules.yml
# and rerun the script (the test deploy_rules_in_sync fails when this file is stale).
# Prometheus Operator: your Prometheus' ruleSelector must match these labels (kube-prometheus-stack:
# add `release: <helm release name>`).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: topserve
  labels:
    app.kubernetes.io/name: topserve
    app.kubernetes.io/part-of: topserve
spec:
"""


def render(rules_text):
    lines = rules_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = ["  " + line if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    with open(RULES, encoding="utf-8") as f:
        rules_text = f.read()
    want = render(rules_text)
    if not args.check:
        with open(MANIFEST, "w", encoding="utf-8") as f:
            f.write(want)
        print(f"wrote {os.path.relpath(MANIFEST, ROOT)}")
        return 0
    try:
        with open(MANIFEST, encoding="utf-8") as f:
            have = f.read()
    except FileNotFoundError:
        print(f"FAIL: {MANIFEST} is missing; run {sys.argv[0]}")
        return 1
    failures = []
    if have != want:
        failures.append("deploy/k8s/prometheusrule.yaml differs from what rules.yml generates "
                        "(run .venv/bin/python tests/deploy/gen_prometheusrule.py)")
    rules_groups = yaml.safe_load(rules_text)["groups"]
    manifest = yaml.safe_load(have)
    if manifest.get("kind") != "PrometheusRule":
        failures.append("prometheusrule.yaml: kind is not PrometheusRule")
    elif manifest.get("spec", {}).get("groups") != rules_groups:
        failures.append("prometheusrule.yaml: spec.groups differ from rules.yml groups")
    alerts = [r["alert"] for g in rules_groups for r in g["rules"] if "alert" in r]
    records = [r["record"] for g in rules_groups for r in g["rules"] if "record" in r]
    for msg in failures:
        print("FAIL:", msg)
    if failures:
        return 1
    print(f"OK: prometheusrule.yaml carries rules.yml's {len(records)} recording rules and "
          f"{len(alerts)} alerts ({', '.join(alerts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
