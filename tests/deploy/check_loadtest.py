#!/usr/bin/env python3
"""Checks the ghz configs in loadtest/ghz/ against ghz's config format and the service's .proto.

  .venv/bin/python tests/deploy/check_loadtest.py [--self-test]

For every loadtest/ghz/*.json: valid JSON; only keys ghz's config loader knows (runner/config.go);
host, call, insecure, total, concurrency and data (or data-file) set; `call` names a unary method of a
service in proto/topserve/v1/inference.proto (read from the .proto text); `proto`, when given, exists
and lies under one of `import-paths`; durations parse as Go durations; async only with rps; every
request of the data parses into the method's request message (protobuf's json_format, the mapping
ghz uses too, on stubs generated from the .proto). Also: the set of configs covers closed-loop
Classify (-c 32 -n 1000), open-loop Classify (--rps, async), Answer, and both reflection and --proto
variants.
"""

import argparse
import copy
import glob
import json
import os
import re
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO = os.path.join(ROOT, "proto", "topserve", "v1", "inference.proto")
sys.path.insert(0, os.path.join(ROOT, "loadtest"))
import load  # noqa: E402  (loadtest/load.py: stub generation shared with the load generator)

# json tags of ghz's runner.Config.
GHZ_KEYS = {"proto", "protoset", "call", "cacert", "cert", "key", "skipTLS", "skipFirst", "cname",
            "authority", "insecure", "total", "async", "concurrency", "concurrency-schedule",
            "concurrency-start", "concurrency-end", "concurrency-step", "concurrency-step-duration",
            "concurrency-max-duration", "connections", "rps", "duration", "duration-stop", "max-duration",
            "timeout", "data", "data-file", "binary-file", "metadata", "metadata-file", "stream-interval",
            "output", "format", "connect-timeout", "keepalive", "cpus", "import-paths", "name", "tags",
            "reflect-metadata", "debug", "host", "enable-compression", "load-schedule", "load-start",
            "load-end", "load-step", "load-step-duration", "load-max-duration"}
DURATION_KEYS = {"timeout", "connect-timeout", "max-duration", "duration", "keepalive", "stream-interval"}
GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def proto_methods(text):
    """{'topserve.v1.Inference': {'Classify': (client_streaming, server_streaming), ...}}."""
    text = re.sub(r"//[^\n]*", "", text)
    pkg = re.search(r"^\s*package\s+([\w.]+)\s*;", text, re.M).group(1)
    out = {}
    for m in re.finditer(r"service\s+(\w+)\s*\{((?:[^{}]|\{[^{}]*\})*)\}", text):
        methods = {}
        for r in re.finditer(r"rpc\s+(\w+)\s*\(\s*(stream\s+)?[\w.]+\s*\)\s*returns\s*\(\s*(stream\s+)?[\w.]+\s*\)",
                             m.group(2)):
            methods[r.group(1)] = (bool(r.group(2)), bool(r.group(3)))
        out[f"{pkg}.{m.group(1)}"] = methods
    return out


def check_config(name, cfg, services, stub_cache):
    errs = []
    if not isinstance(cfg, dict):
        return [f"{name}: not a JSON object"]
    for k in sorted(set(cfg) - GHZ_KEYS):
        errs.append(f"{name}: {k!r} is not a ghz config key")
    for k in ("host", "call", "total", "concurrency"):
        if k not in cfg:
            errs.append(f"{name}: {k} is missing")
    if cfg.get("insecure") is not True:
        errs.append(f"{name}: insecure must be true (the server speaks plaintext gRPC)")
    if not re.match(r"^(127\.\d+\.\d+\.\d+|localhost|\[::1\]):\d+$", str(cfg.get("host", ""))):
        errs.append(f"{name}: host {cfg.get('host')!r} is not a loopback host:port")
    for k in ("total", "concurrency", "rps", "connections"):
        if k in cfg and (not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] < (0 if k == "rps" else 1)):
            errs.append(f"{name}: {k} must be a positive integer")
    for k in DURATION_KEYS & set(cfg):
        if not isinstance(cfg[k], str) or not GO_DURATION.match(cfg[k]):
            errs.append(f"{name}: {k} {cfg[k]!r} is not a Go duration")
    if cfg.get("async") and not cfg.get("rps"):
        errs.append(f"{name}: async without rps is not an open loop")
    if cfg.get("format") not in (None, "summary", "csv", "json", "pretty", "html", "influx-summary", "influx-details"):
        errs.append(f"{name}: format {cfg.get('format')!r}")
    call = str(cfg.get("call", ""))
    m = re.match(r"^([\w.]+)[/.](\w+)$", call)
    method = None
    if not m:
        errs.append(f"{name}: call {call!r} is not package.Service/Method")
    elif m.group(1) not in services:
        errs.append(f"{name}: service {m.group(1)} is not in the .proto (services: {', '.join(services)})")
    elif m.group(2) not in services[m.group(1)]:
        errs.append(f"{name}: {m.group(1)} has no method {m.group(2)} "
                    f"(methods: {', '.join(services[m.group(1)])})")
    elif any(services[m.group(1)][m.group(2)]):
        errs.append(f"{name}: {call} is a streaming method (these configs are for unary calls)")
    else:
        method = call
    if "proto" in cfg:
        proto = os.path.join(ROOT, cfg["proto"])
        paths = [os.path.join(ROOT, p) for p in cfg.get("import-paths", [])]
        if not os.path.isfile(proto):
            errs.append(f"{name}: proto {cfg['proto']} does not exist")
        elif not any(os.path.abspath(proto).startswith(os.path.abspath(p) + os.sep) for p in paths):
            errs.append(f"{name}: proto {cfg['proto']} is not under any of import-paths {cfg.get('import-paths')}")
        elif os.path.abspath(proto) != os.path.abspath(PROTO):
            errs.append(f"{name}: proto {cfg['proto']} is not the service's .proto")
    elif "import-paths" in cfg:
        errs.append(f"{name}: import-paths without proto")
    if ("data" in cfg) == ("data-file" in cfg):
        errs.append(f"{name}: give exactly one of data and data-file")
        return errs
    if "data-file" in cfg:
        path = os.path.join(ROOT, cfg["data-file"])
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            errs.append(f"{name}: data-file {cfg['data-file']}: {e}")
            return errs
    else:
        data = cfg["data"]
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(d, dict) for d in items):
        errs.append(f"{name}: data must be an object or a non-empty array of objects")
        return errs
    if method:
        from google.protobuf import json_format  # noqa: PLC0415

        if method not in stub_cache:
            tmp = stub_cache.setdefault("_tmp", tempfile.TemporaryDirectory(prefix="topserve-ghz-check-"))
            stub_cache[method] = load.load_messages(PROTO, [os.path.join(ROOT, "proto")], method, tmp.name)[1]
        req_cls = stub_cache[method]
        for i, d in enumerate(items):
            try:
                json_format.ParseDict(d, req_cls())
            except json_format.ParseError as e:
                errs.append(f"{name}: data[{i}] is not a {req_cls.DESCRIPTOR.full_name}: {e}")
    return errs


def check_coverage(configs):
    errs = []

    def has(pred, what):
        if not any(pred(c) for c in configs.values()):
            errs.append(f"no config for {what}")

    classify = lambda c: c.get("call", "").endswith("/Classify")  # noqa: E731
    has(lambda c: classify(c) and c.get("concurrency") == 32 and c.get("total") == 1000 and not c.get("rps"),
        "closed-loop Classify with -c 32 -n 1000")
    has(lambda c: classify(c) and c.get("rps") and c.get("async"), "open-loop Classify (rps + async)")
    has(lambda c: c.get("call", "").endswith("/Answer"), "Answer")
    has(lambda c: "proto" not in c, "reflection (no proto)")
    has(lambda c: c.get("proto") == "proto/topserve/v1/inference.proto" and c.get("import-paths") == ["proto"],
        "--proto proto/topserve/v1/inference.proto --import-paths proto")
    return errs


def run(configs, services, stub_cache):
    errs = []
    for name, cfg in sorted(configs.items()):
        errs += check_config(name, cfg, services, stub_cache)
    return errs + check_coverage(configs)


def self_test(configs, services, stub_cache):
    base = configs["classify-closed.json"]
    cases = [
        ("misspelled method", dict(base, call="topserve.v1.Inference/Clasify"), "has no method Clasify"),
        ("wrong package", dict(base, call="topserve.v2.Inference/Classify"), "is not in the .proto"),
        ("streaming method", dict(base, call="topserve.v1.Inference/ClassifyStream"), "streaming method"),
        ("unknown key", dict(base, concurency=32), "not a ghz config key"),
        ("bad duration", dict(base, timeout="10 seconds"), "not a Go duration"),
        ("non-loopback host", dict(base, host="10.1.2.3:8500"), "not a loopback"),
        ("bad request field", {**{k: v for k, v in base.items() if k != "data-file"},
                               "data": [{"inputs": [{"txt": "x"}]}]}, "is not a topserve.v1.ClassifyRequest"),
        ("proto outside import paths", dict(base, proto="proto/topserve/v1/inference.proto", **{"import-paths": ["loadtest"]}),
         "not under any of import-paths"),
    ]
    failed = 0
    errs = run(configs, services, stub_cache)
    print(f"{'ok  ' if not errs else 'FAIL'} the real configs pass: {'; '.join(errs) or 'valid'}")
    failed += bool(errs)
    for name, cfg, want in cases:
        errs = check_config(name, copy.deepcopy(cfg), services, stub_cache)
        ok = any(want in e for e in errs)
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {'; '.join(errs) or 'accepted'}")
        failed += not ok
    cov = check_coverage({k: v for k, v in configs.items() if "proto" not in v})
    ok = any("--proto" in e for e in cov)
    print(f"{'ok  ' if ok else 'FAIL'} coverage catches a missing --proto variant")
    failed += not ok
    return failed


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args(argv)
    with open(PROTO, encoding="utf-8") as f:
        services = proto_methods(f.read())
    configs, errs = {}, []
    for path in sorted(glob.glob(os.path.join(ROOT, "loadtest", "ghz", "*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                configs[os.path.basename(path)] = json.load(f)
        except ValueError as e:
            errs.append(f"{os.path.basename(path)}: not JSON: {e}")
    if not configs:
        errs.append("no loadtest/ghz/*.json")
    stub_cache = {}
    if args.self_test and not errs:
        failed = self_test(configs, services, stub_cache)
        print(f"self-test: {failed} failed" if failed else "self-test: every broken config was rejected")
        return 1 if failed else 0
    errs += run(configs, services, stub_cache)
    for e in errs:
        print("FAIL", e)
    if errs:
        return 1
    print(f"OK: {len(configs)} ghz configs ({', '.join(sorted(configs))}) match ghz's format and "
          f"the methods of {', '.join(services)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
