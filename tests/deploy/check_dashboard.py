#!/usr/bin/env python3
"""Checks deploy/grafana/topserve-dashboard.json and the PromQL of deploy/prometheus/rules.yml.

  .venv/bin/python tests/deploy/check_dashboard.py                       # metric names from server/metrics.cc
  .venv/bin/python tests/deploy/check_dashboard.py --scrape FILE         # ... from a real /metrics scrape
  .venv/bin/python tests/deploy/check_dashboard.py --self-test           # the checks catch broken inputs

Dashboard structure: schemaVersion 36-40; a `datasource` variable of type datasource (prometheus);
a `model` variable from label_values(...); every panel has a unique id, a title, a known type and
gridPos; every non-row panel uses the ${datasource} variable and has targets, each with a refId
(unique in its panel), an expr and the same datasource; every $variable used is defined (or a
Grafana built-in); the panels required by the deployment brief are there.

Names: every metric an expr (dashboard or rules) refers to is one the server exports: a family
registered in server/metrics.cc, or with --scrape a series of a real scrape (then label names in
selectors and by(...) clauses are checked too). Recording-rule names must be defined in rules.yml.
"""

import argparse
import copy
import json
import os
import re
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics_catalog as mc  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "heatmap", "table", "state-timeline",
               "status-history", "text", "barchart", "piechart", "histogram"}
BUILTIN_VARS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
                "__from", "__to", "__dashboard", "__name", "__org", "__user", "__timeFilter"}
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
# Metric families the brief's panels must show (request rate by code, latency, queue vs compute,
# batch size and tokens, queue depth and in-flight, FLOPs fraction and budget, retention, ready),
# and the batch-time predictor's accuracy.
REQUIRED_FAMILIES = ["topserve_requests_total", "topserve_request_duration_seconds",
                     "topserve_queue_duration_seconds", "topserve_compute_duration_seconds",
                     "topserve_batch_size", "topserve_batch_tokens", "topserve_queue_depth",
                     "topserve_inflight_requests", "topserve_flops_fraction", "topserve_budget_used",
                     "topserve_tokens_kept_ratio", "topserve_model_ready",
                     "topserve_batch_compute_over_predicted"]
VAR_RE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|([A-Za-z0-9_]+))")


def all_panels(dash):
    for p in dash.get("panels", []):
        yield p
        for q in p.get("panels", []) or []:  # collapsed rows
            yield q


def check_structure(dash):
    errs = []
    sv = dash.get("schemaVersion")
    if not isinstance(sv, int) or not 36 <= sv <= 40:
        errs.append(f"schemaVersion {sv!r} is not in 36..40")
    for key in ("title", "uid"):
        if not dash.get(key):
            errs.append(f"dashboard {key} is missing")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        errs.append("no `datasource` template variable of type datasource with query prometheus")
    model = variables.get("model")
    if not model or model.get("type") != "query":
        errs.append("no `model` query variable")
    else:
        q = model.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if not isinstance(q, str) or not re.match(r"^label_values\(.+,\s*model\)$", q):
            errs.append(f"`model` variable query {q!r} is not label_values(..., model)")
        if model.get("datasource") != DS_REF:
            errs.append("`model` variable does not use the ${datasource} variable")
    defined = set(variables) | BUILTIN_VARS
    ids = set()
    exprs = []
    for p in all_panels(dash):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        pid = p.get("id")
        if not isinstance(pid, int):
            errs.append(f"{where}: id is not an integer")
        elif pid in ids:
            errs.append(f"{where}: duplicate id {pid}")
        ids.add(pid)
        if not p.get("title"):
            errs.append(f"{where}: no title")
        if p.get("type") not in PANEL_TYPES:
            errs.append(f"{where}: unknown type {p.get('type')!r}")
        gp = p.get("gridPos") or {}
        if not all(isinstance(gp.get(k), int) for k in "xywh") or gp.get("x", 0) + gp.get("w", 0) > 24:
            errs.append(f"{where}: bad gridPos {gp}")
        if p.get("type") == "row":
            continue
        if p.get("datasource") != DS_REF:
            errs.append(f"{where}: datasource is {p.get('datasource')!r}, not {DS_REF}")
        targets = p.get("targets") or []
        if not targets:
            errs.append(f"{where}: no targets")
        refids = set()
        for t in targets:
            if t.get("refId") in refids or not t.get("refId"):
                errs.append(f"{where}: missing or duplicate refId {t.get('refId')!r}")
            refids.add(t.get("refId"))
            if t.get("datasource") != DS_REF:
                errs.append(f"{where}: target {t.get('refId')} datasource is not {DS_REF}")
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                errs.append(f"{where}: target {t.get('refId')} has no expr")
                continue
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                errs.append(f"{where}: unbalanced brackets in {expr}")
            for m in VAR_RE.finditer(expr):
                name = m.group(1) or m.group(2)
                if name not in defined:
                    errs.append(f"{where}: expr uses undefined variable ${name}")
            exprs.append((where, expr))
    return errs, exprs


def check_names(exprs, families, records):
    """exprs: [(where, expr)]. families: name -> Family. records: recording-rule names."""
    errs = []
    index = mc.series_index(families)
    index["up"] = mc.Family("up", "gauge")
    index["up"].labels = {"job", "instance"}
    used_families = set()
    for where, expr in exprs:
        names = mc.referenced_names(expr)
        if not names:
            errs.append(f"{where}: refers to no metric: {expr}")
        fams = []
        for n in sorted(names):
            if ":" in n:
                if n not in records:
                    errs.append(f"{where}: recording rule {n} is not defined in rules.yml")
            elif n not in index:
                errs.append(f"{where}: metric {n} is not exported by the server")
            else:
                fams.append(index[n])
                used_families.add(index[n].name)
        for metric, label in mc.selector_labels(expr):
            fam = index.get(metric)
            if fam is not None and fam.labels is not None and label not in fam.labels | {"__name__", "job", "instance", "le"}:
                errs.append(f"{where}: {metric} has no label {label!r} (labels: {sorted(fam.labels)})")
        known = [f for f in fams if f.labels is not None]
        if known and not any(":" in n for n in names):
            have = set().union(*(f.labels for f in known)) | {"job", "instance", "le"}
            for label in mc.grouping_labels(expr):
                if label not in have:
                    errs.append(f"{where}: groups by {label!r}, which none of its metrics has")
    return errs, used_families


def load_rules(path):
    with open(path, encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    exprs, records = [], set()
    for g in rules["groups"]:
        for r in g["rules"]:
            name = r.get("record") or r.get("alert")
            exprs.append((f"rules.yml {name}", r["expr"]))
            if "record" in r:
                records.add(r["record"])
    return exprs, records


def run(dash, families, rule_exprs, records):
    errs, exprs = check_structure(dash)
    name_errs, used = check_names(exprs, families, records)
    errs += name_errs
    for fam in REQUIRED_FAMILIES:
        if fam not in used:
            errs.append(f"no dashboard panel shows {fam}")
    rule_errs, _ = check_names(rule_exprs, families, records)
    errs += rule_errs
    return errs, len(exprs)


def self_test(dash, families, rule_exprs, records):
    cases = []

    def case(name, mutate, want):
        d = copy.deepcopy(dash)
        mutate(d)
        cases.append((name, d, want))

    def first_ts(d):
        return next(p for p in d["panels"] if p.get("type") == "timeseries")

    case("unknown metric", lambda d: first_ts(d)["targets"][0].update(expr="rate(topserve_no_such_metric_total[5m])"),
         "not exported")
    case("duplicate panel id", lambda d: d["panels"][2].update(id=d["panels"][1]["id"]), "duplicate id")
    case("hard-coded datasource", lambda d: first_ts(d).update(datasource={"type": "prometheus", "uid": "abc"}),
         "datasource is")
    case("undefined variable", lambda d: first_ts(d)["targets"][0].update(
        expr='sum(rate(topserve_requests_total{model=~"$modle"}[5m]))'), "undefined variable $modle")
    case("no model variable", lambda d: d["templating"].update(
        list=[v for v in d["templating"]["list"] if v["name"] != "model"]), "no `model` query variable")
    case("target without expr", lambda d: first_ts(d)["targets"][0].pop("expr"), "has no expr")
    failed = 0
    errs, _ = run(dash, families, rule_exprs, records)
    print(f"{'ok  ' if not errs else 'FAIL'} the real dashboard passes")
    failed += bool(errs)
    for name, d, want in cases:
        errs, _ = run(d, families, rule_exprs, records)
        ok = any(want in e for e in errs)
        shown = "; ".join(errs[:2]) + (f" (+{len(errs) - 2} more)" if len(errs) > 2 else "")
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {shown or 'accepted'}")
        failed += not ok
    bad_rule = [("rules.yml x", "sum(rate(topserve_requests_totl[5m]))")]
    errs, _ = check_names(bad_rule, families, records)
    ok = any("not exported" in e for e in errs)
    print(f"{'ok  ' if ok else 'FAIL'} misspelled metric in a rule: {'; '.join(errs)}")
    failed += not ok
    return failed


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dashboard", default=os.path.join(ROOT, "deploy", "grafana", "topserve-dashboard.json"))
    ap.add_argument("--rules", default=os.path.join(ROOT, "deploy", "prometheus", "rules.yml"))
    ap.add_argument("--metrics-source", default=os.path.join(ROOT, "server", "metrics.cc"))
    ap.add_argument("--scrape", help="a /metrics exposition of the real server (checks labels too)")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args(argv)
    with open(args.dashboard, encoding="utf-8") as f:
        dash = json.load(f)
    if args.scrape:
        with open(args.scrape, encoding="utf-8") as f:
            families = mc.from_exposition(f.read())
        source = f"scrape {args.scrape}"
    else:
        with open(args.metrics_source, encoding="utf-8") as f:
            families = mc.from_source(f.read())
        source = os.path.relpath(args.metrics_source, ROOT)
    families = {n: f for n, f in families.items() if n.startswith("topserve_")}
    if not families:
        print(f"FAIL: no topserve_ metric families found in {source}")
        return 1
    rule_exprs, records = load_rules(args.rules)
    if args.self_test:
        failed = self_test(dash, families, rule_exprs, records)
        print(f"self-test: {failed} failed" if failed else "self-test: every broken dashboard was rejected")
        return 1 if failed else 0
    errs, n = run(dash, families, rule_exprs, records)
    for e in errs:
        print("FAIL", e)
    if errs:
        return 1
    print(f"OK: {n} dashboard exprs and {len(rule_exprs)} rule exprs use only the {len(families)} "
          f"metric families of {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
