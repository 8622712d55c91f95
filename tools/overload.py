#!/usr/bin/env python3
"""Overload benchmark: how topserve-server behaves when offered more than it can compute.

Starts a topserve-server (the Release build) on loopback with the given model, then:

  1. idle:     RSS, and the latency of sequential calls (what "normal" latency is);
  2. capacity: closed loop (--concurrency calls in flight) for --capacity-seconds: capacity = calls
               answered OK per second; service time = their median latency;
  3. 10x:      open loop at --overload x capacity for --seconds, each call with a --deadline
               deadline; then probes every 20 ms to time the recovery to normal latency;
  4. 2.5x:     open loop at --tight-overload x capacity for --seconds with fixed budgets (no
               min_budget) and deadlines of --tight-deadline-factor x the service time.

For each open-loop run it prints: calls sent and answered exactly once (client side, and the
server's topserve_requests_total), the codes, UNAVAILABLE latency p50/p99, goodput (OK within the
deadline per second) against capacity, calls computed vs answered in time (the server's
topserve_sequences_total), RSS before/peak/after, the recovery latency, and how late this client
itself sent (its own lag: on a small machine the load generator competes with the server for CPU).

Open loop: call i is due at start + i / rate, whatever earlier calls are doing; the calls are spread
over --procs processes (asyncio, pre-serialised requests, several channels each), so the Python
client keeps up. Latency is measured from the moment a call was sent. Loopback only.

  .venv/bin/python tools/overload.py --binary build/server/topserve-server \\
      --model models/sst2-small --json /tmp/overload.json
  scripts/overload.sh                      # builds the Release server first, then runs this
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

METHOD = "/topserve.v1.Inference/Classify"
UNAVAILABLE = 14
DEADLINE_EXCEEDED = 4
OK = 0
CODE_NAMES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
              5: "NOT_FOUND", 8: "RESOURCE_EXHAUSTED", 13: "INTERNAL", 14: "UNAVAILABLE"}


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100 * (len(v) - 1)))))]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def requests_bytes(budget):
    """Serialised one-sentence ClassifyRequests (loadtest/data's SST-2 sentences)."""
    import client  # noqa: E402  (tools/client.py: stubs from the repository's .proto)
    pb, _ = client.load_stubs()
    with open(os.path.join(ROOT, "loadtest", "data", "sst2-classify.json")) as f:
        data = json.load(f)
    texts = [d["inputs"][0]["text"] for d in data if len(d["inputs"]) == 1]
    out = []
    for t in texts:
        req = pb.ClassifyRequest(inputs=[pb.TextInput(text=t)])
        if budget is not None:
            req.budget = budget
        out.append(req.SerializeToString())
    return out


# ---- the server ---------------------------------------------------------------------------------

class Server:
    def __init__(self, binary, model, extra_batching, log_path):
        self.dir = tempfile.mkdtemp(prefix="topserve-overload-")
        cfg = os.path.join(self.dir, "config.yaml")
        batching = "".join(f"  {k}: {v}\n" for k, v in extra_batching.items())
        with open(cfg, "w") as f:
            f.write(f"""server:
  listen: "127.0.0.1:0"
  metrics_address: "127.0.0.1"
  metrics_port: 0
models:
  - name: sst2
    path: {os.path.abspath(model)}
batching:
{batching or "  {}"}
""")
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([binary, "--config", cfg], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        self.port = self.metrics_port = None
        while time.monotonic() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {log_path}")
            with open(log_path) as f:
                m = re.search(r"listening: .* port=(\d+) metrics_port=(\d+)", f.read())
            if m:
                self.port, self.metrics_port = int(m.group(1)), int(m.group(2))
            else:
                time.sleep(0.1)
        if self.port is None:
            raise SystemExit(f"server did not start; see {log_path}")
        self.address = f"127.0.0.1:{self.port}"

    def metrics(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=10).read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name_labels, _, value = line.rpartition(" ")
            out[name_labels] = float(value)
        return out

    def rss(self):
        return rss_mb(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def metric_sum(snapshot, name, **labels):
    total = 0.0
    for key, value in snapshot.items():
        if not key.startswith(name + "{") and key != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


def delta(before, after, name, **labels):
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


# ---- load generation ----------------------------------------------------------------------------

async def _open_loop(address, reqs, rate, total, start_at, index, nproc, deadline_s, channels):
    import grpc
    chans = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    calls = [c.unary_unary(METHOD) for c in chans]  # bytes in, bytes out: no protobuf here
    results = []
    pending = set()

    async def one(i, due):
        sent = time.monotonic()
        try:
            await calls[i % len(calls)](reqs[i % len(reqs)], timeout=deadline_s)
            code = OK
        except grpc.aio.AioRpcError as e:
            code = e.code().value[0]
        results.append((i, due, sent, time.monotonic(), code))

    n = 0
    for i in range(index, total, nproc):
        due = start_at + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        elif n % 16 == 0:
            await asyncio.sleep(0)  # Behind: still let replies in.
        n += 1
        t = asyncio.ensure_future(one(i, due))
        pending.add(t)
        t.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    for c in chans:
        await c.close()
    return results


def _open_loop_proc(args):
    return asyncio.run(_open_loop(*args))


async def _closed_loop(address, reqs, concurrency, seconds, deadline_s):
    import grpc
    chans = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(4)]
    calls = [c.unary_unary(METHOD) for c in chans]
    results = []
    stop = time.monotonic() + seconds

    async def worker(w):
        k = w
        while time.monotonic() < stop:
            sent = time.monotonic()
            try:
                await calls[w % len(calls)](reqs[k % len(reqs)], timeout=deadline_s)
                code = OK
            except grpc.aio.AioRpcError as e:
                code = e.code().value[0]
            results.append((sent, time.monotonic(), code))
            k += concurrency
            if code != OK:
                await asyncio.sleep(0.02)  # Refused: back off as a client would, not spin.

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    for c in chans:
        await c.close()
    return results


async def _probes(address, req, start_at, seconds, interval, deadline_s):
    """Sequential calls every `interval` s from start_at for `seconds`: (sent, latency, code)."""
    import grpc
    chan = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    call = chan.unary_unary(METHOD)
    out = []
    t = start_at
    while t < start_at + seconds:
        wait = t - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        sent = time.monotonic()
        try:
            await call(req, timeout=deadline_s)
            code = OK
        except grpc.aio.AioRpcError as e:
            code = e.code().value[0]
        out.append((sent, time.monotonic() - sent, code))
        t = max(t + interval, time.monotonic())
    await chan.close()
    return out


def _probes_proc(args):
    return asyncio.run(_probes(*args))


def open_loop(server, reqs, rate, seconds, deadline_s, procs, channels, probe=None):
    """Runs the open loop in `procs` processes; optionally probes recovery from the end of the
    offered window (probe = (seconds, interval, normal_latency_s)). Samples RSS meanwhile."""
    total = int(rate * seconds)
    start_at = time.monotonic() + 1.0  # Time for the processes to start and connect.
    ctx = mp.get_context("fork")
    pool = ctx.Pool(procs + (1 if probe else 0))
    jobs = [pool.apply_async(_open_loop_proc, ((server.address, reqs, rate, total, start_at, k,
                                                 procs, deadline_s, channels),))
            for k in range(procs)]
    probe_job = None
    end_at = start_at + seconds
    if probe:
        probe_job = pool.apply_async(_probes_proc, ((server.address, reqs[0], end_at, probe[0],
                                                     probe[1], 10.0),))
    peak = server.rss()
    rss_samples = []
    while not all(j.ready() for j in jobs) or (probe_job and not probe_job.ready()):
        r = server.rss()
        peak = max(peak, r)
        rss_samples.append((time.monotonic() - start_at, r))
        time.sleep(0.25)
    results = [r for j in jobs for r in j.get()]
    probes = probe_job.get() if probe_job else []
    pool.close()
    pool.join()
    return {"results": results, "probes": probes, "start_at": start_at, "end_at": end_at,
            "total": total, "peak_rss": peak, "rss_samples": rss_samples}


def summarise(name, run, capacity, deadline_s, before, after, rss_idle, rss_after, normal_s):
    res = run["results"]
    sent = len(res)
    ids = [r[0] for r in res]
    answered_once = len(set(ids)) == len(ids) == run["total"]
    codes = {}
    for r in res:
        codes[r[4]] = codes.get(r[4], 0) + 1
    lat = {}
    for r in res:
        lat.setdefault(r[4], []).append(r[3] - r[2])
    window = run["end_at"] - run["start_at"]
    in_deadline = sum(1 for r in res if r[4] == OK and r[3] - r[2] <= deadline_s)
    goodput = in_deadline / window
    lag = [r[2] - r[1] for r in res]
    server_answered = delta(before, after, "topserve_requests_total", method="Classify")
    computed = delta(before, after, "topserve_sequences_total", model="sst2")
    shed = {reason: delta(before, after, "topserve_shed_sequences_total", reason=reason)
            for reason in ("queue_full", "predicted_late", "late_in_queue", "expired")}
    out = {
        "run": name,
        "offered_rps": run["total"] / window,
        "seconds": window,
        "deadline_s": deadline_s,
        "calls": run["total"],
        "answered": sent,
        "answered_exactly_once": answered_once,
        "server_answered": server_answered,
        "codes": {CODE_NAMES.get(k, str(k)): v for k, v in sorted(codes.items())},
        "unavailable_p50_ms": pct(lat.get(UNAVAILABLE, []), 50) * 1e3,
        "unavailable_p99_ms": pct(lat.get(UNAVAILABLE, []), 99) * 1e3,
        "deadline_exceeded_p50_ms": pct(lat.get(DEADLINE_EXCEEDED, []), 50) * 1e3,
        "ok_p50_ms": pct(lat.get(OK, []), 50) * 1e3,
        "ok_p99_ms": pct(lat.get(OK, []), 99) * 1e3,
        "in_deadline": in_deadline,
        "goodput_rps": goodput,
        "goodput_vs_capacity": goodput / capacity,
        "computed_sequences": computed,
        "computed_not_in_time": computed - in_deadline,
        "shed": shed,
        "client_send_lag_p50_ms": pct(lag, 50) * 1e3,
        "client_send_lag_p99_ms": pct(lag, 99) * 1e3,
        "rss_idle_mb": rss_idle,
        "rss_peak_mb": run["peak_rss"],
        "rss_after_mb": rss_after,
        "load_average": os.getloadavg(),
    }
    if run["probes"]:
        probes = run["probes"]
        out["server_answered"] -= len(probes)
        out["computed_not_in_time"] -= sum(1 for p in probes if p[2] == OK)
        # From the end of the offered load: when the last call was due, or sent if this client
        # fell behind. Recovered: the first of 5 probes in a row at normal latency that end after it.
        end = max(run["end_at"], max(r[2] for r in res))
        recovered = None
        streak = 0
        for k, (t, latency, code) in enumerate(probes):
            if code == OK and latency <= normal_s:
                streak += 1
                if streak >= 5 and t + latency >= end:
                    recovered = max(0.0, probes[k - 4][0] - end)
                    break
            else:
                streak = 0
        out["recovery_s"] = recovered
        out["normal_latency_ms"] = normal_s * 1e3
        out["first_probes_ms"] = [round(p[1] * 1e3, 2) for p in probes[:10]]
    return out


def show(s):
    print(f"\n== {s['run']}: {s['offered_rps']:.0f} calls/s offered for {s['seconds']:.0f} s, "
          f"deadline {s['deadline_s'] * 1e3:.0f} ms")
    print(f"  calls {s['calls']}, answered {s['answered']} "
          f"(exactly once: {s['answered_exactly_once']}; server counted {s['server_answered']:.0f})")
    print(f"  codes {s['codes']}")
    print(f"  UNAVAILABLE latency p50 {s['unavailable_p50_ms']:.2f} ms, p99 "
          f"{s['unavailable_p99_ms']:.2f} ms; OK p50 {s['ok_p50_ms']:.1f} ms, p99 "
          f"{s['ok_p99_ms']:.1f} ms")
    print(f"  in deadline {s['in_deadline']}: goodput {s['goodput_rps']:.0f} calls/s = "
          f"{100 * s['goodput_vs_capacity']:.1f}% of capacity")
    print(f"  sequences computed {s['computed_sequences']:.0f}, of them not answered in time "
          f"{s['computed_not_in_time']:.0f}; shed {s['shed']}")
    print(f"  RSS idle {s['rss_idle_mb']:.0f} MB, peak {s['rss_peak_mb']:.0f} MB, after "
          f"{s['rss_after_mb']:.0f} MB")
    if "recovery_s" in s:
        rec = "not within the probe window" if s["recovery_s"] is None else \
            f"{s['recovery_s'] * 1e3:.0f} ms"
        print(f"  recovery to normal latency (<= {s['normal_latency_ms']:.1f} ms, 5 probes in a "
              f"row): {rec}; first probes {s['first_probes_ms']} ms")
    print(f"  load average {', '.join(f'{x:.1f}' for x in s['load_average'])}")
    print(f"  client send lag p50 {s['client_send_lag_p50_ms']:.1f} ms, p99 "
          f"{s['client_send_lag_p99_ms']:.1f} ms")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--binary", default=os.path.join(ROOT, "build", "server", "topserve-server"))
    p.add_argument("--model", default=os.path.join(ROOT, "models", "sst2-small"))
    p.add_argument("--budget", type=float, default=None,
                   help="fixed budget of every call (default: the model's default_budget)")
    p.add_argument("--concurrency", type=int, default=64,
                   help="closed loop, for capacity (several batches in flight, so that the "
                        "worker never waits for this client)")
    p.add_argument("--capacity-seconds", type=float, default=8)
    p.add_argument("--seconds", type=float, default=20, help="each open-loop run")
    p.add_argument("--overload", type=float, default=10)
    p.add_argument("--deadline", type=float, default=10, help="seconds, in the --overload run")
    p.add_argument("--tight-overload", type=float, default=2.5)
    p.add_argument("--tight-deadline-factor", type=float, default=4)
    p.add_argument("--procs", type=int, default=3, help="client processes for the open loops")
    p.add_argument("--channels", type=int, default=2, help="channels per client process")
    p.add_argument("--runs", default="overload,tight", help="comma-separated: overload, tight")
    p.add_argument("--batching", action="append", default=[], metavar="KEY=VALUE",
                   help="a batching: key of the server's config (repeatable)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--server-log", default=os.path.join(tempfile.gettempdir(),
                                                        "topserve-overload-server.log"))
    args = p.parse_args()

    extra = {"max_queue_delay_us": 0}
    for kv in args.batching:
        k, _, v = kv.partition("=")
        extra[k] = v
    reqs = requests_bytes(args.budget)
    server = Server(args.binary, args.model, extra, args.server_log)
    out = {"cpu": cpu_name(), "args": vars(args), "runs": []}
    try:
        # Wait until the model is ready (calls answer OK).
        deadline = time.monotonic() + 120
        while True:
            r = asyncio.run(_closed_loop(server.address, reqs, 1, 0.2, 5.0))
            if r and r[-1][2] == OK:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"model not ready; see {args.server_log}")
            time.sleep(0.2)
        asyncio.run(_closed_loop(server.address, reqs, args.concurrency, 2.0, 10.0))  # warm-up
        idle = asyncio.run(_closed_loop(server.address, reqs, 1, 3.0, 10.0))
        idle_lat = [e - s for s, e, c in idle if c == OK]
        normal = max(2 * pct(idle_lat, 50), pct(idle_lat, 99))
        time.sleep(1)
        rss_idle = server.rss()
        cap = asyncio.run(_closed_loop(server.address, reqs, args.concurrency,
                                       args.capacity_seconds, 10.0))
        ok = [(s, e) for s, e, c in cap if c == OK]
        capacity = len(ok) / args.capacity_seconds
        service = statistics.median(e - s for s, e in ok)
        out.update(idle_p50_ms=pct(idle_lat, 50) * 1e3, idle_p99_ms=pct(idle_lat, 99) * 1e3,
                   capacity_rps=capacity, service_time_ms=service * 1e3, rss_idle_mb=rss_idle,
                   capacity_errors=len(cap) - len(ok))
        print(f"CPU: {out['cpu']}")
        print(f"idle: sequential calls p50 {out['idle_p50_ms']:.2f} ms, p99 "
              f"{out['idle_p99_ms']:.2f} ms; RSS {rss_idle:.0f} MB")
        print(f"capacity (closed loop, {args.concurrency} in flight, {args.capacity_seconds:.0f} s): "
              f"{capacity:.0f} calls/s, service time (median latency) {service * 1e3:.1f} ms, "
              f"{out['capacity_errors']} calls refused")
        for name in filter(None, args.runs.split(",")):
            if name == "overload":
                rate, deadline_s, label = args.overload * capacity, args.deadline, \
                    f"{args.overload:g}x capacity"
                probe = (8.0, 0.02, normal)
            elif name == "tight":
                rate, deadline_s = args.tight_overload * capacity, \
                    args.tight_deadline_factor * service
                label = (f"{args.tight_overload:g}x capacity, fixed budgets, deadline "
                         f"{args.tight_deadline_factor:g}x service time")
                probe = None
            else:
                raise SystemExit(f"unknown run {name!r}")
            before = server.metrics()
            rss_before = server.rss()
            run = open_loop(server, reqs, rate, args.seconds, deadline_s, args.procs,
                            args.channels, probe)
            time.sleep(2)
            after = server.metrics()
            s = summarise(label, run, capacity, deadline_s, before, after, rss_before,
                          server.rss(), normal)
            show(s)
            out["runs"].append(s)
    finally:
        server.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
