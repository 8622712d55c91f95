#!/usr/bin/env python3
"""A small gRPC load generator for topserve that reads ghz's config files and writes ghz's JSON report.

For machines without ghz: the same runs as `ghz --config loadtest/ghz/X.json`, with the same report
layout (date, endReason, options, count, total, average, fastest, slowest, rps, errorDistribution,
statusCodeDistribution, latencyDistribution p10..p99, histogram, details; durations in nanoseconds,
status names as ghz prints them: OK, Unavailable, DeadlineExceeded, ...), so reports of both tools can
be compared.

  .venv/bin/python loadtest/load.py --config loadtest/ghz/classify-closed.json
  .venv/bin/python loadtest/load.py --config loadtest/ghz/classify-open.json -n 300 -O summary
  .venv/bin/python loadtest/load.py --call topserve.v1.Inference/Classify \\
      -d '{"inputs": [{"text": "a gorgeous , witty , seductive movie ."}]}' -c 8 -n 100 127.0.0.1:8500

Load models, as in ghz:
  closed loop (default)   `concurrency` workers, each sends its next call when the previous returns;
  rate-limited (--rps R)  the same workers, but call i starts no earlier than i/R s after the start;
  open loop (--rps R --async)  call i starts at i/R s whatever the earlier calls are doing.
The run stops after `total` calls, or at `max-duration` (endReason "timeout"), or on Ctrl-C
("cancel"); every call has a deadline (`timeout`, default 20s). Only unary methods are supported.

Stubs are generated at run time with grpc_tools.protoc into a temporary directory, from `proto`
(default: the repository's proto/topserve/v1/inference.proto; this tool has no reflection client, so
configs written for reflection work too). Data: `data` (a request as a JSON object, or an array used
round-robin, as ghz does for unary calls) or `data-file`. Paths are relative to the current directory,
as in ghz: run it from the repository root.

Targets must be loopback addresses (127.0.0.0/8, ::1, localhost): the tool refuses anything else. To
load a cluster, `kubectl port-forward svc/topserve 8500` first.

Runs in the project's environment, .venv/bin/python (grpcio, grpcio-tools, protobuf from requirements/).
"""

import argparse
import asyncio
import datetime as dt
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEFAULT_PROTO = os.path.join(ROOT, "proto", "topserve", "v1", "inference.proto")
DEFAULT_IMPORT_PATHS = [os.path.join(ROOT, "proto")]

# Go's codes.Code.String(), which ghz uses for statusCodeDistribution and error messages.
GO_CODE_NAMES = {
    "OK": "OK", "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
}
PERCENTILES = [10, 25, 50, 75, 90, 95, 99]
MAX_DETAILS = 1_000_000  # ghz's maxResult
NS = 1_000_000_000


class UsageError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Options: ghz's config keys, overridden by command-line flags.

DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h))+$")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": NS, "m": 60 * NS, "h": 3600 * NS}


def parse_duration(value, key):
    """Go duration ("20s", "1m30s", "250ms") or a number of nanoseconds -> nanoseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    if text == "0":
        return 0
    if not DURATION_RE.match(text):
        raise UsageError(f"{key}: {value!r} is not a duration such as 20s, 500ms or 1m30s")
    return int(sum(float(n) * _UNIT_NS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)))


CONFIG_KEYS = {"name", "host", "insecure", "call", "proto", "import-paths", "data", "data-file",
               "concurrency", "total", "rps", "async", "timeout", "connect-timeout", "max-duration",
               "connections", "format", "output", "metadata", "tags", "skipFirst", "protoset",
               "cacert", "cert", "key", "skipTLS", "cname", "authority", "duration", "cpus"}
UNSUPPORTED = {"protoset", "cacert", "cert", "key", "cname", "duration", "skipFirst"}


def build_options(args):
    cfg = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            cfg = json.load(f)
        if not isinstance(cfg, dict):
            raise UsageError(f"{args.config}: not a JSON object")
        unknown = sorted(set(cfg) - CONFIG_KEYS)
        if unknown:
            raise UsageError(f"{args.config}: keys this tool does not know: {', '.join(unknown)}")
        used = sorted(k for k in UNSUPPORTED & set(cfg) if cfg[k] not in (None, "", 0, False, []))
        if used:
            raise UsageError(f"{args.config}: not supported by load.py: {', '.join(used)}")
    flags = {
        "name": args.name, "host": args.host, "call": args.call, "proto": args.proto,
        "import-paths": args.import_paths.split(",") if args.import_paths else None,
        "data": json.loads(args.data) if args.data else None, "data-file": args.data_file,
        "concurrency": args.concurrency, "total": args.total, "rps": args.rps,
        "async": True if args.use_async else None, "timeout": args.timeout,
        "connect-timeout": args.connect_timeout, "max-duration": args.max_duration,
        "connections": args.connections, "format": args.format, "output": args.output,
    }
    for k, v in flags.items():
        if v is not None:
            cfg[k] = v
    if args.data_file and not args.data:
        cfg.pop("data", None)
    if args.data and not args.data_file:
        cfg.pop("data-file", None)
    o = {
        "name": cfg.get("name", ""),
        "host": cfg.get("host", ""),
        "insecure": bool(cfg.get("insecure", True)),
        "call": cfg.get("call", ""),
        "proto": cfg.get("proto") or "",
        "import-paths": list(cfg.get("import-paths") or []),
        "concurrency": int(cfg.get("concurrency", 50)),
        "total": int(cfg.get("total", 200)),
        "rps": float(cfg.get("rps", 0) or 0),
        "async": bool(cfg.get("async", False)),
        "timeout": parse_duration(cfg.get("timeout", "20s"), "timeout"),
        "connect-timeout": parse_duration(cfg.get("connect-timeout", "10s"), "connect-timeout"),
        "max-duration": parse_duration(cfg.get("max-duration", 0), "max-duration"),
        "connections": int(cfg.get("connections", 1)),
        "format": cfg.get("format", "summary"),
        "output": cfg.get("output", ""),
        "metadata": cfg.get("metadata") or {},
        "tags": cfg.get("tags") or {},
    }
    if "data-file" in cfg and "data" not in cfg:
        with open(cfg["data-file"], encoding="utf-8") as f:
            o["data"] = json.load(f)
        o["data-file"] = cfg["data-file"]
    else:
        o["data"] = cfg.get("data", {})
    if not o["host"]:
        raise UsageError("no host: give host:port as the argument or `host` in the config")
    if not re.match(r"^[A-Za-z0-9_.]+[./][A-Za-z0-9_]+$", o["call"]):
        raise UsageError(f"call {o['call']!r} is not package.Service/Method")
    if o["concurrency"] < 1 or o["total"] < 1 or o["connections"] < 1:
        raise UsageError("concurrency, total and connections must be >= 1")
    if o["connections"] > o["concurrency"]:
        raise UsageError("connections must not exceed concurrency")
    if o["rps"] < 0:
        raise UsageError("rps must be >= 0")
    if o["async"] and not o["rps"]:
        raise UsageError("async needs rps (an open-loop rate)")
    if o["format"] not in ("summary", "json", "pretty"):
        raise UsageError(f"format {o['format']!r}: this tool writes summary, json or pretty")
    if not o["insecure"]:
        raise UsageError("only plaintext (insecure: true) is supported")
    data = o["data"]
    if isinstance(data, list):
        if not data or not all(isinstance(d, dict) for d in data):
            raise UsageError("data: an array must hold one or more JSON objects")
    elif not isinstance(data, dict):
        raise UsageError("data: must be a JSON object or an array of objects")
    return o


def check_loopback(host):
    """Refuses any target that is not a loopback address."""
    m = re.match(r"^\[?([^\]]+?)\]?:(\d+)$", host)
    if not m:
        raise UsageError(f"host {host!r} is not host:port")
    name, port = m.group(1), int(m.group(2))
    try:
        infos = socket.getaddrinfo(name, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise UsageError(f"host {name!r} does not resolve: {e}") from e
    addrs = {info[4][0] for info in infos}
    bad = sorted(a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if bad or not addrs:
        raise UsageError(f"host {host!r} resolves to non-loopback addresses {bad}: this tool only "
                         "targets 127.0.0.0/8 or ::1 (use kubectl port-forward for a cluster)")


# ---------------------------------------------------------------------------------------------
# Stubs, generated at run time.

def generate_stubs(proto, includes, tmpdir):
    """grpc_tools.protoc, as for the project's other Python clients; when its bundled protoc is too
    old for the .proto (Debian 12's python3-grpc-tools bundles protoc 3.5, which rejects proto3
    `optional` fields), Debian's protoc (protobuf-compiler) writes the message module instead: this
    tool only needs the messages, it calls methods through the generic channel API."""
    import grpc_tools  # noqa: PLC0415 (imported only when needed, so --self-test runs without it)

    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    flags = [f"-I{p}" for p in includes + [p for p in (wkt, "/usr/include") if os.path.isdir(p)]]
    attempts = [[sys.executable, "-m", "grpc_tools.protoc", *flags, f"--python_out={tmpdir}",
                 f"--grpc_python_out={tmpdir}", proto]]
    system_protoc = shutil.which("protoc")
    if system_protoc:
        attempts.append([system_protoc, *flags, f"--python_out={tmpdir}", proto])
    errors = []
    for cmd in attempts:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        errors.append(f"{os.path.basename(cmd[0]) if cmd[0] != sys.executable else 'grpc_tools.protoc'}: {last}")
    raise UsageError(f"could not generate stubs for {proto}: " + "; ".join(errors))


def load_messages(proto, import_paths, call, tmpdir):
    proto = os.path.abspath(proto)
    includes = [os.path.abspath(p) for p in import_paths] or [os.path.dirname(proto)]
    if not any(proto.startswith(p.rstrip("/") + "/") for p in includes):
        includes.append(os.path.dirname(proto))
    generate_stubs(proto, includes, tmpdir)
    root = next(p for p in includes if proto.startswith(p.rstrip("/") + "/"))
    rel = os.path.relpath(proto, root)[: -len(".proto")]
    module_file = os.path.join(tmpdir, rel + "_pb2.py")
    sys.path.insert(0, tmpdir)
    spec = importlib.util.spec_from_file_location(rel.replace("/", ".") + "_pb2", module_file)
    pb2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pb2)

    service_name, method_name = call.rsplit("/", 1) if "/" in call else call.rsplit(".", 1)
    fd = pb2.DESCRIPTOR
    service = next((s for s in fd.services_by_name.values() if s.full_name == service_name), None)
    if service is None:
        names = ", ".join(s.full_name for s in fd.services_by_name.values())
        raise UsageError(f"service {service_name} is not in {proto} (it has: {names})")
    method = service.methods_by_name.get(method_name)
    if method is None:
        raise UsageError(f"{service_name} has no method {method_name} (it has: "
                         f"{', '.join(service.methods_by_name)})")
    if method.client_streaming or method.server_streaming:
        raise UsageError(f"{service_name}/{method_name} is a streaming method; load.py sends unary calls only")

    def message_class(desc):
        obj = pb2
        for part in desc.full_name[len(fd.package) + 1:].split("."):
            obj = getattr(obj, part)
        return obj

    return f"/{service_name}/{method_name}", message_class(method.input_type), message_class(method.output_type)


# ---------------------------------------------------------------------------------------------
# The report, computed exactly as ghz's runner/reporter.go does.

def go_time(ts):
    """RFC 3339 with nanoseconds, as Go's time.Time marshals to JSON."""
    t = dt.datetime.fromtimestamp(ts, dt.timezone.utc).astimezone()
    frac = f"{ts % 1:.9f}"[2:].rstrip("0")
    off = t.strftime("%z")
    off = "Z" if off == "+0000" else off[:3] + ":" + off[3:]
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + off


def latency_distribution(ok_sorted_s):
    out = []
    n = float(len(ok_sorted_s))
    for p in PERCENTILES:
        ip = (p / 100.0) * n
        di = int(ip)
        if ip == float(di):
            di -= 1
        di = max(di, 0)
        v = ok_sorted_s[di]
        out.append({"percentage": p, "latency": int(v * NS)} if v > 0 else {"percentage": 0, "latency": 0})
    return out


def histogram(ok_sorted_s):
    fastest, slowest = ok_sorted_s[0], ok_sorted_s[-1]
    bc = 10
    bs = (slowest - fastest) / bc
    marks = [fastest + bs * i for i in range(bc)] + [slowest]
    counts = [0] * (bc + 1)
    bi = 0
    i = 0
    while i < len(ok_sorted_s):
        if ok_sorted_s[i] <= marks[bi]:
            counts[bi] += 1
            i += 1
        elif bi < len(marks) - 1:
            bi += 1
        else:  # float rounding left the slowest above the last mark
            counts[bi] += 1
            i += 1
    return [{"mark": m, "count": c, "frequency": c / len(ok_sorted_s)} for m, c in zip(marks, counts)]


def make_report(options, results, total_ns, end_reason, date_ts):
    """results: [(start timestamp s, latency s, status name, error string)]."""
    status_dist, error_dist = {}, {}
    for _, _, status, err in results:
        status_dist[status] = status_dist.get(status, 0) + 1
        if err:
            error_dist[err] = error_dist.get(err, 0) + 1
    report = {
        "date": _rfc3339_seconds(date_ts),
        "endReason": end_reason,
        "options": options,
        "count": len(results),
        "total": int(total_ns),
        "average": 0, "fastest": 0, "slowest": 0, "rps": 0.0,
        "errorDistribution": error_dist,
        "statusCodeDistribution": status_dist,
        "latencyDistribution": None,
        "histogram": None,
        "details": None,
    }
    if results:
        report["average"] = int(sum(r[1] for r in results) / len(results) * NS)
        report["rps"] = len(results) / (total_ns / NS) if total_ns > 0 else 0.0
        ok = sorted(r[1] for r in results if not r[3])
        if ok:
            report["fastest"] = int(ok[0] * NS)
            report["slowest"] = int(ok[-1] * NS)
            report["histogram"] = histogram(ok)
            report["latencyDistribution"] = latency_distribution(ok)
        report["details"] = [{"timestamp": go_time(ts), "latency": int(lat * NS), "error": err, "status": st}
                             for ts, lat, st, err in results[:MAX_DETAILS]]
    return report


def _rfc3339_seconds(ts):
    t = dt.datetime.fromtimestamp(ts, dt.timezone.utc).astimezone()
    off = t.strftime("%z")
    off = "Z" if off == "+0000" else off[:3] + ":" + off[3:]
    return t.strftime("%Y-%m-%dT%H:%M:%S") + off


def report_options(o):
    out = {
        "host": o["host"], "proto": o["proto"], "import-paths": o["import-paths"] or None,
        "call": o["call"], "insecure": o["insecure"], "total": o["total"],
        "concurrency": o["concurrency"], "rps": o["rps"], "async": o["async"],
        "connections": o["connections"], "timeout": o["timeout"], "dial-timeout": o["connect-timeout"],
        "max-duration": o["max-duration"], "data": o["data"], "binary": False,
        "CPUs": os.cpu_count() or 1, "name": o["name"], "tool": "topserve loadtest/load.py",
    }
    return {k: v for k, v in out.items() if v not in (None, "")}


def summary(report):
    ms = lambda ns: f"{ns / 1e6:.2f} ms"  # noqa: E731
    lines = ["", "Summary:"]
    if report["options"].get("name"):
        lines.append(f"  Name:\t{report['options']['name']}")
    lines += [f"  Count:\t{report['count']}", f"  Total:\t{ms(report['total'])}",
              f"  Slowest:\t{ms(report['slowest'])}", f"  Fastest:\t{ms(report['fastest'])}",
              f"  Average:\t{ms(report['average'])}", f"  Requests/sec:\t{report['rps']:.2f}",
              f"  End reason:\t{report['endReason']}", "", "Latency distribution:"]
    for d in report["latencyDistribution"] or []:
        lines.append(f"  {d['percentage']} % in {ms(d['latency'])}")
    lines += ["", "Status code distribution:"]
    for k, v in sorted(report["statusCodeDistribution"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  [{k}]\t{v} responses")
    if report["errorDistribution"]:
        lines += ["", "Error distribution:"]
        for k, v in sorted(report["errorDistribution"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  [{v}]\t{k}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The run.

async def run_load(o, path, req_cls, resp_cls):
    import grpc  # noqa: PLC0415
    from google.protobuf import json_format  # noqa: PLC0415

    data = o["data"] if isinstance(o["data"], list) else [o["data"]]
    try:
        requests = [json_format.ParseDict(d, req_cls()) for d in data]
    except json_format.ParseError as e:
        raise UsageError(f"data does not match {req_cls.DESCRIPTOR.full_name}: {e}") from e
    payloads = [r.SerializeToString() for r in requests]
    metadata = tuple((k.lower(), str(v)) for k, v in o["metadata"].items()) or None

    channels = [grpc.aio.insecure_channel(o["host"]) for _ in range(o["connections"])]
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)),
                                   o["connect-timeout"] / NS)
        except asyncio.TimeoutError as e:
            raise UsageError(f"could not connect to {o['host']} within {o['connect-timeout'] / NS:g}s") from e
        calls = [c.unary_unary(path, request_serializer=lambda b: b, response_deserializer=resp_cls.FromString)
                 for c in channels]
        results = []
        next_index = 0
        timeout_s = o["timeout"] / NS if o["timeout"] > 0 else None
        start = time.monotonic()
        start_wall = time.time()

        async def one(i, worker):
            t0 = time.monotonic()
            ts = start_wall + (t0 - start)
            try:
                await calls[worker % len(calls)](payloads[i % len(payloads)], timeout=timeout_s, metadata=metadata)
                status, err = "OK", ""
            except grpc.aio.AioRpcError as e:
                status = GO_CODE_NAMES.get(e.code().name, e.code().name.title())
                err = f"rpc error: code = {status} desc = {e.details()}"
            results.append((ts, time.monotonic() - t0, status, err))

        async def worker(w):
            nonlocal next_index
            while next_index < o["total"]:
                i = next_index
                next_index += 1
                if o["rps"]:
                    delay = start + i / o["rps"] - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await one(i, w)

        async def open_loop():
            pending = set()
            for i in range(o["total"]):
                delay = start + i / o["rps"] - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(one(i, i % o["concurrency"]))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)

        main = open_loop() if o["async"] else asyncio.gather(*(worker(w) for w in range(o["concurrency"])))
        main_task = asyncio.ensure_future(main)
        end_reason = "normal"
        loop = asyncio.get_running_loop()
        cancelled = asyncio.Event()
        try:
            loop.add_signal_handler(signal.SIGINT, cancelled.set)
            loop.add_signal_handler(signal.SIGTERM, cancelled.set)
        except (NotImplementedError, RuntimeError):
            pass
        stopper = asyncio.ensure_future(cancelled.wait())
        waits = {main_task, stopper}
        limit = o["max-duration"] / NS if o["max-duration"] > 0 else None
        done, _ = await asyncio.wait(waits, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        if main_task not in done:
            end_reason = "cancel" if stopper in done else "timeout"
            main_task.cancel()
            try:
                await main_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 (in-flight calls are dropped)
                pass
        else:
            main_task.result()
        stopper.cancel()
        total_ns = int((time.monotonic() - start) * NS)
        results.sort(key=lambda r: r[0])
        return make_report(report_options(o), results, total_ns, end_reason, time.time())
    finally:
        for c in channels:
            await c.close()


# ---------------------------------------------------------------------------------------------
# Self-test: the report computation against values worked out by hand from ghz's algorithm.

def self_test():
    failures = []

    def expect(name, got, want):
        if got != want:
            failures.append(f"{name}: got {got!r}, want {want!r}")

    lat = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    results = [(1700000000.0 + i, lat[i], "OK", "") for i in range(100)]
    results.append((1700000100.0, 0.5, "Unavailable", "rpc error: code = Unavailable desc = queue full"))
    rep = make_report({"call": "x"}, results, 2 * NS, "normal", 1700000200.0)
    expect("keys", list(rep), ["date", "endReason", "options", "count", "total", "average", "fastest",
                               "slowest", "rps", "errorDistribution", "statusCodeDistribution",
                               "latencyDistribution", "histogram", "details"])
    expect("count", rep["count"], 101)
    expect("rps", rep["rps"], 50.5)
    expect("fastest", rep["fastest"], 1_000_000)
    expect("slowest (errors excluded)", rep["slowest"], 100_000_000)
    expect("average (errors included)", rep["average"], int((5.05 + 0.5) / 101 * NS))
    # ghz: rank p/100*n, minus one when whole: p10 of 100 values is the 10th (10 ms).
    expect("p10", rep["latencyDistribution"][0], {"percentage": 10, "latency": 10_000_000})
    expect("p99", rep["latencyDistribution"][-1], {"percentage": 99, "latency": 99_000_000})
    expect("percentiles", [d["percentage"] for d in rep["latencyDistribution"]], PERCENTILES)
    expect("histogram buckets", len(rep["histogram"]), 11)
    expect("histogram total", sum(b["count"] for b in rep["histogram"]), 100)
    expect("histogram first mark (s)", rep["histogram"][0]["mark"], 0.001)
    expect("status", rep["statusCodeDistribution"], {"OK": 100, "Unavailable": 1})
    expect("errors", rep["errorDistribution"], {"rpc error: code = Unavailable desc = queue full": 1})
    expect("details", len(rep["details"]), 101)
    expect("detail keys", sorted(rep["details"][0]), ["error", "latency", "status", "timestamp"])
    expect("date format", bool(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$", rep["date"])), True)
    odd = make_report({}, [(0.0, 0.003, "OK", ""), (1.0, 0.001, "OK", ""), (2.0, 0.002, "OK", "")], NS, "normal", 0)
    # 3 values: p10 rank 0.3 -> index 0; p50 rank 1.5 -> index 1; p99 rank 2.97 -> index 2.
    expect("odd p10/p50/p99", [odd["latencyDistribution"][i]["latency"] for i in (0, 2, 6)],
           [1_000_000, 2_000_000, 3_000_000])
    expect("durations", parse_duration("1m30s", "x"), 90 * NS)
    expect("durations ms", parse_duration("250ms", "x"), 250_000_000)
    for host, ok in [("127.0.0.1:8500", True), ("localhost:1", True), ("[::1]:8500", True),
                     ("10.0.0.1:8500", False), ("8.8.8.8:53", False)]:
        try:
            check_loopback(host)
            got = True
        except UsageError:
            got = False
        expect(f"loopback check {host}", got, ok)
    for f in failures:
        print("FAIL", f)
    print("self-test:", "FAILED" if failures else "report layout and statistics match ghz's")
    return 1 if failures else 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host", nargs="?", help="host:port (loopback only); overrides the config's host")
    ap.add_argument("--config", help="a ghz JSON config file (loadtest/ghz/*.json)")
    ap.add_argument("--call", help="package.Service/Method, e.g. topserve.v1.Inference/Classify")
    ap.add_argument("--proto", help=f"the .proto file (default {os.path.relpath(DEFAULT_PROTO)})")
    ap.add_argument("-i", "--import-paths", help="comma-separated proto import paths")
    ap.add_argument("-d", "--data", help="request as JSON (an object, or an array used round-robin)")
    ap.add_argument("-D", "--data-file", help="file holding the JSON data")
    ap.add_argument("-c", "--concurrency", type=int, help="workers (default 50)")
    ap.add_argument("-n", "--total", type=int, help="calls to make (default 200)")
    ap.add_argument("-r", "--rps", type=float, help="rate limit, calls/s (0 = none)")
    ap.add_argument("--async", dest="use_async", action="store_true", help="open loop: send at --rps regardless of replies")
    ap.add_argument("-t", "--timeout", help="deadline of each call (default 20s; 0 = none)")
    ap.add_argument("--connect-timeout", help="initial connection timeout (default 10s)")
    ap.add_argument("-x", "--max-duration", help="stop after this long even if calls remain (endReason timeout)")
    ap.add_argument("--connections", type=int, help="channels to spread the workers over (default 1)")
    ap.add_argument("-O", "--format", choices=["summary", "json", "pretty"], help="report format (default summary)")
    ap.add_argument("-o", "--output", help="report file (default stdout)")
    ap.add_argument("--name", help="a name for the run")
    ap.add_argument("--self-test", action="store_true", help="check the report computation and exit")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    try:
        o = build_options(args)
        check_loopback(o["host"])
        proto = o["proto"] or DEFAULT_PROTO
        import_paths = o["import-paths"] if o["proto"] else DEFAULT_IMPORT_PATHS
        with tempfile.TemporaryDirectory(prefix="topserve-load-") as tmp:
            path, req_cls, resp_cls = load_messages(proto, import_paths, o["call"], tmp)
            report = asyncio.run(run_load(o, path, req_cls, resp_cls))
    except UsageError as e:
        print(f"load.py: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"load.py: error: {e.filename}: no such file (run from the repository root)", file=sys.stderr)
        return 2
    if o["format"] == "summary":
        text = summary(report)
    else:
        text = json.dumps(report, indent=2 if o["format"] == "pretty" else None, ensure_ascii=False) + "\n"
    if o["output"]:
        os.makedirs(os.path.dirname(os.path.abspath(o["output"])), exist_ok=True)
        with open(o["output"], "w", encoding="utf-8") as f:
            f.write(text)
        print(f"load.py: {report['count']} calls in {report['total'] / NS:.2f}s ({report['rps']:.1f}/s), "
              f"status {report['statusCodeDistribution']}; report: {o['output']}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
