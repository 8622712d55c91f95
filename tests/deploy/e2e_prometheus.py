#!/usr/bin/env python3
"""End-to-end check of the deployment artefacts against the real server and a real Prometheus.

  .venv/bin/python tests/deploy/e2e_prometheus.py --server build/server/topserve-server \\
      --shared ../shared [--prometheus /usr/bin/prometheus]

Steps (all on 127.0.0.1, ports chosen by the OS; everything started here is stopped here):
  1. generate two tiny random models (tools/gen_model.py): classification and QA;
  2. start topserve-server with the server config of deploy/k8s/configmap.yaml (model paths pointed
     at the tiny models, a QA model added, addresses on loopback): the real parser accepts it;
  3. ask grpc.health.v1 for the service names of the Deployment's probes: all SERVING;
  4. scrape /metrics and run tests/deploy/check_dashboard.py --scrape on it (metric and label names
     of the dashboard and of the rules against the real exposition);
  5. start Prometheus with deploy/prometheus/prometheus.yml (target rewritten to the server's
     metrics port, 1 s scrape and rule evaluation) and deploy/prometheus/rules.yml;
  6. send traffic with loadtest/load.py using every loadtest/ghz/*.json config (fewer calls), and
     check each report (ghz's keys, every call OK);
  7. query Prometheus: every rule loaded and healthy, every recording rule has data, no alert
     pending or firing, every dashboard expression (variables substituted) parses and returns data,
     the Prometheus adapter's HPA metric query (deploy/prometheus-adapter/rules.yaml, templated
     for this one target) returns one value;
  8. SIGTERM the server: it drains and exits 0.
"""

import argparse
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PY = sys.executable
# Fewer calls than the configs ask for, to keep the test short.
CALLS = {"classify-closed": 200, "classify-closed-proto": 100, "classify-open": 100,
         "answer-closed": 24, "answer-closed-proto": 16}
REPORT_KEYS = ["date", "endReason", "options", "count", "total", "average", "fastest", "slowest", "rps",
               "errorDistribution", "statusCodeDistribution", "latencyDistribution", "histogram", "details"]


class Failure(Exception):
    pass


def log(msg):
    print(msg, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return r.read().decode()


def prom_query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(http_get(url))
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            body = json.loads(text)
        except ValueError:
            raise Failure(f"HTTP {e.code} for {expr}: {text[:200]}") from e
    if body.get("status") != "success":
        raise Failure(f"query failed: {expr}: {body.get('error')}")
    return body["data"]["result"]


def health_status(port, service):
    """grpc.health.v1.Health/Check with hand-encoded protobuf (field 1 = service)."""
    import grpc  # noqa: PLC0415

    raw = service.encode()
    req = b"\x0a" + bytes([len(raw)]) + raw if raw else b""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        try:
            resp = call(req, timeout=5)
        except grpc.RpcError as e:
            return e.code().name
    # HealthCheckResponse: field 1 varint ServingStatus (1 SERVING, 2 NOT_SERVING); absent = 0.
    return {b"": "UNKNOWN", b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(resp, resp.hex())


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise Failure(f"timed out after {timeout}s waiting for {what}")


def substitute(expr):
    for var, val in (("${datasource}", ""), ("$__rate_interval", "15s"), ("$__range", "1m"),
                     ("$__interval", "5s"), ("${model}", ".+"), ("$model", ".+"), ("${method}", ".+"),
                     ("$method", ".+")):
        expr = expr.replace(var, val)
    if "$" in expr:
        raise Failure(f"unsubstituted variable in {expr}")
    return expr


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True)
    ap.add_argument("--shared", required=True, help="the shared data folder (vocab)")
    ap.add_argument("--prometheus", default="prometheus")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="topserve-deploy-e2e-")
    procs = []
    failures = []
    try:
        run(args, tmp, procs, failures)
    except Failure as e:
        failures.append(str(e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if not args.keep:
            subprocess.run(["rm", "-rf", tmp], check=False)
        else:
            log(f"kept {tmp}")
    for f in failures:
        log(f"FAIL {f}")
    log("e2e: " + ("FAILED" if failures else "all checks passed"))
    return 1 if failures else 0


def run(args, tmp, procs, failures):
    vocab = os.path.join(args.shared, "data", "bert-base-uncased", "vocab.txt")
    for task in ("cls", "qa"):
        subprocess.run([PY, os.path.join(ROOT, "tools", "gen_model.py"), "--out", os.path.join(tmp, task),
                        "--preset", "tiny", "--task", task, "--vocab", vocab], check=True,
                       stdout=subprocess.DEVNULL)
    log("ok   generated tiny classification and QA models")

    # 2. The ConfigMap's server config, pointed at the tiny models.
    with open(os.path.join(ROOT, "deploy", "k8s", "configmap.yaml"), encoding="utf-8") as f:
        cm = next(d for d in yaml.safe_load_all(f) if d)
    config = yaml.safe_load(cm["data"]["config.yaml"])
    config["server"]["metrics_address"] = "127.0.0.1"
    config["models"].append({"name": "squad", "path": os.path.join(tmp, "qa")})
    cls_name = config["models"][0]["name"]
    with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    log_path = os.path.join(tmp, "server.log")
    server_log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed with the process)
    server = subprocess.Popen([args.server, "--config", os.path.join(tmp, "config.yaml"),
                               "--model", f"{cls_name}={os.path.join(tmp, 'cls')}",
                               "--listen", "127.0.0.1:0", "--metrics-port", "0", "--threads", "1"],
                              stdout=server_log, stderr=subprocess.STDOUT)
    procs.append(server)

    def server_ready():
        if server.poll() is not None:
            raise Failure(f"server exited with {server.returncode}: {open(log_path).read()[-2000:]}")
        text = open(log_path, encoding="utf-8").read()
        m = re.search(r"listening: .* port=(\d+) metrics_port=(\d+)", text)
        return m and "ready:" in text and (int(m.group(1)), int(m.group(2)))

    grpc_port, metrics_port = wait_for(server_ready, 60, "the server to load the models")
    log(f"ok   server started with the ConfigMap's config (grpc {grpc_port}, metrics {metrics_port})")

    # 3. The Deployment's probes.
    with open(os.path.join(ROOT, "deploy", "k8s", "deployment.yaml"), encoding="utf-8") as f:
        dep = next(d for d in yaml.safe_load_all(f) if d)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        service = container[probe]["grpc"].get("service", "")
        status = health_status(grpc_port, service)
        ok = status == "SERVING"
        log(f"{'ok  ' if ok else 'FAIL'} {probe}: grpc.health.v1 Check(service={service!r}) = {status}")
        if not ok:
            failures.append(f"{probe} service {service!r} is {status}")

    # 4. Names against the real exposition.
    scrape = os.path.join(tmp, "metrics.txt")
    with open(scrape, "w", encoding="utf-8") as f:
        f.write(http_get(f"http://127.0.0.1:{metrics_port}/metrics"))
    p = subprocess.run([PY, os.path.join(ROOT, "tests", "deploy", "check_dashboard.py"), "--scrape", scrape],
                       capture_output=True, text=True, check=False)
    log(("ok   " if p.returncode == 0 else "FAIL ") + p.stdout.strip().replace("\n", "\n     "))
    if p.returncode != 0:
        failures.append("dashboard/rules names against the real scrape")

    # 5. Prometheus with the repository's config and rules.
    with open(os.path.join(ROOT, "deploy", "prometheus", "prometheus.yml"), encoding="utf-8") as f:
        prom_cfg = yaml.safe_load(f)
    prom_cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    prom_cfg["rule_files"] = [os.path.join(ROOT, "deploy", "prometheus", r) for r in prom_cfg["rule_files"]]
    job = next(j for j in prom_cfg["scrape_configs"] if j["job_name"] == "topserve")
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{metrics_port}"]
    with open(os.path.join(tmp, "prometheus.yml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(prom_cfg, f)
    prom_port = free_port()
    base = f"http://127.0.0.1:{prom_port}"
    prom = subprocess.Popen([args.prometheus, f"--config.file={tmp}/prometheus.yml",
                             f"--storage.tsdb.path={tmp}/tsdb", f"--web.listen-address=127.0.0.1:{prom_port}",
                             "--log.level=warn"],
                            stdout=open(os.path.join(tmp, "prometheus.log"), "w", encoding="utf-8"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    procs.append(prom)

    def prom_up():
        if prom.poll() is not None:
            raise Failure(f"prometheus exited: {open(os.path.join(tmp, 'prometheus.log')).read()[-2000:]}")
        try:
            return prom_query(base, 'up{job="topserve"} == 1')
        except (OSError, Failure):
            return None

    wait_for(prom_up, 60, "Prometheus to scrape the server")
    log("ok   Prometheus (deploy/prometheus/prometheus.yml + rules.yml) scrapes the server")

    # 6. Traffic from every ghz config.
    for cfg in sorted(glob.glob(os.path.join(ROOT, "loadtest", "ghz", "*.json"))):
        name = os.path.basename(cfg)[:-5]
        n = CALLS.get(name, 20)
        out = os.path.join(tmp, f"{name}.report.json")
        p = subprocess.run([PY, os.path.join(ROOT, "loadtest", "load.py"), "--config", cfg, f"127.0.0.1:{grpc_port}",
                            "-n", str(n), "-O", "json", "-o", out], capture_output=True, text=True,
                           cwd=ROOT, timeout=300, check=False)
        if p.returncode != 0:
            failures.append(f"load.py {name}: exit {p.returncode}: {p.stderr.strip()[-500:]}")
            continue
        with open(out, encoding="utf-8") as f:
            rep = json.load(f)
        problems = []
        if list(rep) != REPORT_KEYS:
            problems.append(f"keys {list(rep)}")
        if rep["count"] != n or rep["statusCodeDistribution"] != {"OK": n} or rep["endReason"] != "normal":
            problems.append(f"count {rep['count']}, status {rep['statusCodeDistribution']}, "
                            f"end {rep['endReason']}, errors {list(rep['errorDistribution'])[:2]}")
        if [d["percentage"] for d in rep["latencyDistribution"]] != [10, 25, 50, 75, 90, 95, 99]:
            problems.append("latencyDistribution")
        if problems:
            failures.append(f"load.py {name}: " + "; ".join(problems))
        log(f"{'ok  ' if not problems else 'FAIL'} load.py --config loadtest/ghz/{name}.json -n {n}: "
            f"{rep['count']} calls, {rep['rps']:.0f}/s, p50 {rep['latencyDistribution'][2]['latency'] / 1e6:.1f} ms, "
            f"status {rep['statusCodeDistribution']}")

    # 7. Rules and dashboard queries on the scraped data. Wait for a few scrapes and evaluations.
    time.sleep(4)
    rules = json.loads(http_get(f"{base}/api/v1/rules"))["data"]["groups"]
    with open(os.path.join(ROOT, "deploy", "prometheus", "rules.yml"), encoding="utf-8") as f:
        want = yaml.safe_load(f)["groups"]
    want_names = sorted(r.get("record") or r.get("alert") for g in want for r in g["rules"])
    got_names = sorted(r["name"] for g in rules for r in g["rules"])
    if got_names != want_names:
        failures.append(f"Prometheus loaded rules {got_names}, want {want_names}")
    unhealthy = [f"{r['name']}: {r.get('lastError')}" for g in rules for r in g["rules"] if r.get("health") != "ok"]
    if unhealthy:
        failures.append(f"unhealthy rules: {unhealthy}")
    empty = []
    for g in want:
        for r in g["rules"]:
            if "record" in r and not prom_query(base, r["record"]):
                empty.append(r["record"])
    if empty:
        failures.append(f"recording rules without data: {empty}")
    log(f"{'ok  ' if not (unhealthy or empty) else 'FAIL'} {len(got_names)} rules loaded and healthy; "
        f"recording rules with data: {sum(1 for g in want for r in g['rules'] if 'record' in r) - len(empty)}")
    alerts = json.loads(http_get(f"{base}/api/v1/alerts"))["data"]["alerts"]
    if alerts:
        failures.append(f"alerts active on a healthy server: {[(a['labels']['alertname'], a['state']) for a in alerts]}")
    log(f"{'ok  ' if not alerts else 'FAIL'} no alert pending or firing on the healthy server")

    with open(os.path.join(ROOT, "deploy", "grafana", "topserve-dashboard.json"), encoding="utf-8") as f:
        dash = json.load(f)
    n_ok, bad = 0, []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            try:
                res = prom_query(base, substitute(t["expr"]))
            except Failure as e:
                bad.append(f"panel {panel['title']!r} {t['refId']}: {e}")
                continue
            if not res:
                bad.append(f"panel {panel['title']!r} {t['refId']}: no data: {t['expr']}")
            else:
                n_ok += 1
    for v in dash["templating"]["list"]:
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"^label_values\((.+),\s*(\w+)\)$", q or "")
        if m and not prom_query(base, substitute(m.group(1))):
            bad.append(f"variable {v['name']}: {m.group(1)} has no series")
    failures.extend(bad)
    log(f"{'ok  ' if not bad else 'FAIL'} dashboard: {n_ok} panel queries returned data"
        + (f", {len(bad)} did not" if bad else ""))

    # 7b. The Prometheus adapter's HPA metric (deploy/prometheus-adapter/rules.yaml): its query,
    # templated as the adapter does for one pod (here: one scrape target), returns one value.
    with open(os.path.join(ROOT, "deploy", "prometheus-adapter", "rules.yaml"), encoding="utf-8") as f:
        adapter = yaml.safe_load(yaml.safe_load(f)["data"]["config.yaml"])
    for rule in adapter["rules"]:
        series = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", rule["seriesQuery"]).group(1)
        expr = (rule["metricsQuery"].replace("<<.Series>>", series)
                .replace("<<.LabelMatchers>>", 'job="topserve"').replace("<<.GroupBy>>", "instance"))
        name = (rule.get("name") or {}).get("as", series)
        try:
            res = prom_query(base, expr)
            ok = len(res) == 1 and float(res[0]["value"][1]) >= 0
            why = f"{len(res)} series: {res}"
        except Failure as e:
            ok, why = False, str(e)
        if not ok:
            failures.append(f"adapter metric {name}: {expr}: {why}")
        log(f"{'ok  ' if ok else 'FAIL'} adapter metric {name}: {expr} = "
            f"{res[0]['value'][1] if ok else why}")

    # 8. Drain.
    server.send_signal(signal.SIGTERM)
    try:
        rc = server.wait(40)
    except subprocess.TimeoutExpired:
        rc = None
    if rc != 0:
        failures.append(f"server did not exit 0 after SIGTERM (exit {rc})")
    log(f"{'ok  ' if rc == 0 else 'FAIL'} SIGTERM: server drained and exited {rc}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
