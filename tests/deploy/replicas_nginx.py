#!/usr/bin/env python3
"""Several replicas behind a real gRPC balancer: three topserve-server processes on loopback behind
Debian's nginx running deploy/nginx/topserve-grpc.conf (HTTP/2, grpc_pass to an upstream block).

  .venv/bin/python tests/deploy/replicas_nginx.py --server build/server/topserve-server \
      [--calls 300] [--concurrency 6] [--no-retry]

What it does and checks:
  * a fourth upstream is a replica that never becomes ready (it answers every call UNAVAILABLE,
    as a pod does while loading or draining before the balancer drops it); a quarter of the first
    attempts land there, so the client's retry policy is exercised on every run;
  * bounded load through nginx: --calls Classify calls from --concurrency threads, on a channel
    with the retry service config of deploy/k8s/grpc-client-config.yaml (`grpc.service_config`);
  * halfway through, SIGTERM to one serving replica: it must drain and exit 0; the load goes on
    until --calls-after-exit calls began after that exit, so the drain (new connections refused,
    open ones answered UNAVAILABLE until their max-age GOAWAY) and the exit happen under load;
  * every call ends OK; every serving replica answered a share of the calls (nginx's access log
    names the upstream of every attempt; the surviving replicas' own topserve_requests_total
    counters must agree with it); the draining replica answers nothing after it has exited.
  With --no-retry (no service config) calls that meet UNAVAILABLE fail, and so does the test:
  that is how to see it can fail.
Prints the number of calls, their spread and the outcome of each attempt.
"""

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import client  # noqa: E402

NGINX_CONF = os.path.join(ROOT, "deploy", "nginx", "topserve-grpc.conf")
CLIENT_CONFIG = os.path.join(ROOT, "deploy", "k8s", "grpc-client-config.yaml")
MODEL = os.path.join(ROOT, "models", "sst2-small")
TEXTS = ["a gorgeous , witty , seductive movie .",
         "the plot is nothing but boilerplate clichés from start to finish , and the actors seem "
         "to know it as well as we do .",
         "an utterly charming and hilarious film that reminded me of why i love the movies ."]


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def service_config():
    """The service-config JSON of the shipped client ConfigMap."""
    with open(CLIENT_CONFIG) as f:
        cm = [d for d in yaml.safe_load_all(f) if d][0]
    return cm["data"]["service-config.json"]


class Replica:
    def __init__(self, name, server, work, extra=()):
        self.name = name
        cfg = os.path.join(work, f"{name}.yaml")
        with open(cfg, "w") as f:
            f.write(f"""server:
  listen: "127.0.0.1:0"
  metrics_address: "127.0.0.1"
  metrics_port: 0
  drain_grace_seconds: 10
  # The drain ends once every client connection has had its max-age GOAWAY: 2 s keeps the test
  # short (the shipped configs use 10 s).
  max_connection_age_seconds: 2
models:
  - name: sst2
    path: {MODEL}
    default_budget: 0.5
batching:
  threads_per_worker: 1
""")
        self.log_path = os.path.join(work, f"{name}.log")
        self.log = open(self.log_path, "w+")
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        self.proc = subprocess.Popen([server, "--config", cfg, *extra], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        self.port = self.metrics_port = None

    def wait_listening(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(self.log_path) as f:
                m = re.search(r"listening: .* port=(\d+) metrics_port=(\d+)", f.read())
            if m:
                self.port, self.metrics_port = int(m.group(1)), int(m.group(2))
                return
            if self.proc.poll() is not None:
                fail(f"replica {self.name} exited {self.proc.returncode}: {open(self.log_path).read()}")
            time.sleep(0.1)
        fail(f"replica {self.name} did not start listening in {timeout}s")

    def wait_ready(self, timeout=120):
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if client.health_check(channel, "sst2", timeout=2) == "SERVING":
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        fail(f"replica {self.name} not ready after {timeout}s")

    def ok_calls(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        m = re.search(r'^topserve_requests_total\{(?=[^}]*code="OK")(?=[^}]*method="Classify")'
                      r'(?=[^}]*model="sst2")[^}]*\} (\S+)', text, re.M)
        return int(float(m.group(1))) if m else 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def nginx_config(work, listen_port, upstreams):
    """deploy/nginx/topserve-grpc.conf with its upstream servers and listen port replaced, inside
    a minimal nginx.conf that keeps every file nginx writes under `work`."""
    with open(NGINX_CONF) as f:
        text = f.read()
    lines = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s weight={w};"
                      for p, w in upstreams)
    text, n = re.subn(r"(upstream topserve \{\n(?:\s*#.*\n)*)(?:\s*server [^;]+;\n)+",
                      lambda m: m.group(1) + lines + "\n", text)
    if n != 1:
        fail(f"{NGINX_CONF}: no upstream topserve block with server lines")
    text, n = re.subn(r"^(\s*)listen \d+ http2;", rf"\1listen 127.0.0.1:{listen_port} http2;",
                      text, flags=re.M)
    if n != 1:
        fail(f"{NGINX_CONF}: no 'listen PORT http2;' line")
    site = os.path.join(work, "topserve-grpc.conf")
    with open(site, "w") as f:
        f.write(text)
    main = os.path.join(work, "nginx.conf")
    for old in ("access.log", "nginx-error.log"):
        if os.path.exists(os.path.join(work, old)):
            os.remove(os.path.join(work, old))
    with open(main, "w") as f:
        f.write(f"""daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log notice;
events {{ worker_connections 256; }}
http {{
    log_format attempts '$msec|$status|$upstream_http_grpc_status|$upstream_trailer_grpc_status|'
                        '$upstream_addr';
    access_log {work}/access.log attempts;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {site};
}}
""")
    return main


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", required=True)
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--calls-after-exit", type=int, default=100,
                   help="keep the load on until this many calls began after the drained replica "
                        "exited (so its exit happens under load)")
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--no-retry", action="store_true", help="no service config (the test must fail)")
    p.add_argument("--work", help="keep the logs here (default: a temporary directory)")
    args = p.parse_args()
    if not os.path.exists(args.nginx):
        print(f"FAIL nginx not found ({args.nginx}): run scripts/install-deps.sh")
        return 1
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="topserve-replicas-")
    os.makedirs(work, exist_ok=True)
    pb, grpc_pb = client.load_stubs(os.path.join(work, "stubs"))

    t_start = time.time()
    passed = False
    replicas = [Replica(n, args.server, work) for n in ("a", "b", "c")]
    # Never ready: its model "loads" for ten minutes, so every call gets UNAVAILABLE.
    loading = Replica("loading", args.server, work, ["--test-ready-delay-ms", "600000"])
    nginx = None
    try:
        for r in replicas + [loading]:
            r.wait_listening()
        for r in replicas:
            r.wait_ready()
        by_port = {r.port: r for r in replicas + [loading]}
        listen = free_port()
        # The never-ready replica gets 1 attempt in 10: each call meets it at most a few times in a
        # row (the retry policy allows 5 attempts).
        conf = nginx_config(work, listen, [(r.port, 3) for r in replicas] + [(loading.port, 1)])
        t = subprocess.run([args.nginx, "-t", "-q", "-c", conf, "-e", f"{work}/nginx-error.log"],
                           capture_output=True, text=True)
        if t.returncode != 0:
            fail(f"nginx -t rejects {NGINX_CONF}: {t.stderr.strip()}")
        nginx = subprocess.Popen([args.nginx, "-c", conf, "-e", f"{work}/nginx-error.log"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        options = [] if args.no_retry else [("grpc.service_config", service_config())]
        channel = grpc.insecure_channel(f"127.0.0.1:{listen}", options=options)
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = grpc_pb.InferenceStub(channel)

        drained = replicas[1]
        done = 0
        done_lock = threading.Lock()
        kill_at = args.calls // 2
        killed = threading.Event()
        drain_result = {}
        errors = []

        def drain():
            t0 = time.time()
            drain_result["sent_at"] = t0
            drained.proc.send_signal(signal.SIGTERM)
            try:
                rc = drained.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                rc = "still running after 30 s"
            drain_result.update(rc=rc, seconds=time.time() - t0, exited_at=time.time())

        def call(i):
            nonlocal done
            req = pb.ClassifyRequest(model="sst2", inputs=[pb.TextInput(text=TEXTS[i % len(TEXTS)])])
            try:
                resp = stub.Classify(req, timeout=30)
                outcome = "OK" if len(resp.results) == 1 and resp.results[0].label else "BAD"
            except grpc.RpcError as e:
                outcome = e.code().name
                errors.append(f"{e.code().name}: {e.details()}")
            with done_lock:
                done += 1
                if done >= kill_at and not killed.is_set():
                    killed.set()
                    threading.Thread(target=drain).start()
            return outcome

        # Calls go on until --calls are done and --calls-after-exit began after the drained
        # replica exited: the drain, its GOAWAYs and the exit all happen under load.
        outcomes = []
        started = {"n": 0, "after_exit": 0}
        load_deadline = time.time() + 90

        def worker():
            while True:
                with done_lock:
                    exited = "exited_at" in drain_result
                    if (started["n"] >= args.calls and exited and
                            started["after_exit"] >= args.calls_after_exit) or \
                            time.time() > load_deadline:
                        return
                    i = started["n"]
                    started["n"] += 1
                    started["after_exit"] += exited
                outcome = call(i)
                with done_lock:
                    outcomes.append(outcome)

        t0 = time.time()
        workers = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        load_s = time.time() - t0
        total = len(outcomes)
        deadline = time.time() + 35
        while "rc" not in drain_result and time.time() < deadline:
            time.sleep(0.1)
        channel.close()
        nginx.send_signal(signal.SIGQUIT)  # graceful: the access log is complete
        nginx.wait(timeout=10)
        nginx = None

        # Every attempt nginx passed on, by upstream and outcome.
        attempts = collections.Counter()
        per_replica_ok = collections.Counter()
        after_exit = 0
        during_drain = collections.Counter()
        with open(os.path.join(work, "access.log")) as f:
            for line in f:
                msec, status, hdr_status, trl_status, upstream = line.strip().split("|")
                grpc_status = trl_status if trl_status != "-" else hdr_status
                # $upstream_addr lists every upstream tried for one call: "a:1, b:2"; the last
                # one answered.
                last = upstream.split(",")[-1].strip()
                port = int(last.rsplit(":", 1)[1]) if ":" in last else None
                who = by_port[port].name if port in by_port else upstream
                outcome = {"0": "OK", "1": "CANCELLED", "14": "UNAVAILABLE"}.get(grpc_status, f"http {status} "
                                                                f"grpc {grpc_status}")
                attempts[(who, outcome)] += 1
                if outcome == "OK":
                    per_replica_ok[who] += 1
                if who == drained.name and float(msec) >= drain_result.get("sent_at", 1e30):
                    during_drain[outcome] += 1
                if who == drained.name and "exited_at" in drain_result and \
                        float(msec) > drain_result["exited_at"] + 0.5:
                    after_exit += 1
        survivors = {r.name: r.ok_calls() for r in replicas if r is not drained}

        results = collections.Counter(outcomes)
        print(f"{total} calls, {args.concurrency} concurrent, through nginx "
              f"({'retry service config' if options else 'NO service config'}) in {load_s:.1f}s; "
              f"SIGTERM to replica {drained.name} after {kill_at} calls, "
              f"{started['after_exit']} calls begun after it exited")
        print("call outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(results.items())))
        print("attempts by upstream: " + ", ".join(f"{w}/{o} {n}"
                                                  for (w, o), n in sorted(attempts.items())))
        print("OK calls per serving replica: " + ", ".join(
            f"{r.name} {per_replica_ok[r.name]} ({100 * per_replica_ok[r.name] / total:.0f}%)"
            for r in replicas))
        print(f"replica {drained.name} after SIGTERM: exit {drain_result.get('rc')} in "
              f"{drain_result.get('seconds', 0):.1f}s; its attempts ending after the SIGTERM: "
              + (", ".join(f"{o} {n}" for o, n in sorted(during_drain.items())) or "none"))

        problems = []
        if results["OK"] != total:
            problems.append(f"{total - results['OK']} of {total} calls not OK: {dict(results)}")
        if started["after_exit"] < args.calls_after_exit:
            problems.append(f"only {started['after_exit']} calls began after replica "
                            f"{drained.name} exited (load deadline): its exit was not under load")
        if drain_result.get("rc") != 0:
            problems.append(f"replica {drained.name}: exit {drain_result.get('rc')} after SIGTERM, want 0")
        if sum(per_replica_ok.values()) != results["OK"]:
            problems.append(f"nginx logged {sum(per_replica_ok.values())} OK attempts for "
                            f"{results['OK']} OK calls")
        for r in replicas:
            if per_replica_ok[r.name] < 0.05 * kill_at:
                problems.append(f"replica {r.name} answered {per_replica_ok[r.name]} calls: not spread")
        for name, n in survivors.items():
            if n != per_replica_ok[name]:
                problems.append(f"replica {name}: its metrics count {n} OK calls, nginx's log "
                                f"{per_replica_ok[name]}")
        # An attempt nginx could not complete (HTTP 502: the replica closed the connection under
        # a call) is a defect even when the client's retry happened to rescue the call: gRPC
        # clients treat a call with response headers as committed and often cannot retry it.
        broken = {k: n for k, n in attempts.items() if k[1].startswith("http ")}
        if broken:
            problems.append(f"attempts without a gRPC status (nginx could not complete them): "
                            f"{broken}")
        if attempts[("loading", "UNAVAILABLE")] == 0:
            problems.append("no attempt reached the loading replica: the retry path was not exercised")
        if after_exit:
            problems.append(f"{after_exit} attempts reached replica {drained.name} after it exited")
        for e in sorted(set(errors)):
            print(f"error: {e}")
        for prob in problems:
            print(f"FAIL {prob}")
        if problems:
            print(f"logs in {work}")
            return 1
        print(f"ok   every call answered, spread over the replicas, drain exit 0 "
              f"({time.time() - t_start:.1f}s in all)")
        passed = True
        return 0
    finally:
        if nginx is not None:
            nginx.kill()
            nginx.wait()
        for r in replicas + [loading]:
            r.stop()
        if not args.work and passed:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
