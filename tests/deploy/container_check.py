#!/usr/bin/env python3
"""Checks a running topserve container from the host (scripts/test-container.sh).

  container_check.py k8s --k8s deploy/k8s --out DIR
      Writes what the manifests say, one value per file, for the shell script: the ConfigMap's
      config.yaml (DIR/config/config.yaml), the Deployment's args (one per line), env (NAME=VALUE
      lines), uid/gid, terminationGracePeriodSeconds, the health service names of its probes, and
      the first model's name.

  container_check.py serve --grpc HOST:PORT --metrics URL --client build/server/topserve-client \
      --python .venv/bin/python [--health NAME ...] [--classify MODEL] [--answer MODEL] \
      [--default-budget B] [--container NAME --podman podman]
      Waits for the server, then checks: every --health name SERVING; Classify (--classify) and
      Answer (--answer) through both clients (C++ topserve-client and tools/client.py) with equal
      results that are consistent in themselves, and (--default-budget) that a call without a
      budget runs at the config's default; reflection lists the services; a metrics scrape
      counts exactly the calls made. Exits non-zero with one line per failure.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request

import grpc
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import client  # noqa: E402

TEXT = "a gorgeous , witty , seductive movie ."
QUESTION = "Which team won Super Bowl 50?"
CONTEXT = ("Super Bowl 50 was an American football game. The Denver Broncos defeated the Carolina "
           "Panthers 24-10 to earn their third Super Bowl title.")
BUDGET = 0.5


class Failed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failed(msg)


# ---- k8s: what the manifests say ------------------------------------------------------------

def load_docs(k8s_dir):
    docs = []
    for name in sorted(os.listdir(k8s_dir)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(k8s_dir, name)) as f:
                docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def probe_services(container):
    names = []
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        p = container.get(probe)
        if p and "grpc" in p:
            names.append(p["grpc"].get("service", ""))
    return list(dict.fromkeys(names))


def cmd_k8s(args):
    docs = load_docs(args.k8s)
    deps = [d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == "topserve"]
    check(len(deps) == 1, "no Deployment named topserve")
    pod = deps[0]["spec"]["template"]["spec"]
    ctr = [c for c in pod["containers"] if c["name"] == "topserve"][0]
    # The ConfigMap that the Deployment's /etc/topserve volume names.
    mount = [m for m in ctr["volumeMounts"] if m["mountPath"] == "/etc/topserve"][0]
    vol = [v for v in pod["volumes"] if v["name"] == mount["name"]][0]
    cm_name = vol["configMap"]["name"]
    cms = [d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == cm_name]
    check(len(cms) == 1, f"the Deployment mounts ConfigMap {cm_name}, which is not in {args.k8s}")
    os.makedirs(os.path.join(args.out, "config"), exist_ok=True)
    for item in vol["configMap"].get("items", [{"key": k, "path": k} for k in cms[0]["data"]]):
        with open(os.path.join(args.out, "config", item["path"]), "w") as f:
            f.write(cms[0]["data"][item["key"]])
    server_cfg = yaml.safe_load(cms[0]["data"]["config.yaml"])
    sec = pod.get("securityContext", {})
    values = {
        "args": "\n".join(ctr.get("args", [])),
        "env": "\n".join(f"{e['name']}={e['value']}" for e in ctr.get("env", []) if "value" in e),
        "uid": str(ctr.get("securityContext", {}).get("runAsUser", sec.get("runAsUser", ""))),
        "gid": str(ctr.get("securityContext", {}).get("runAsGroup", sec.get("runAsGroup", ""))),
        "termination_grace": str(pod.get("terminationGracePeriodSeconds", 30)),
        "probe_services": "\n".join(probe_services(ctr)),
        "first_model": server_cfg["models"][0]["name"],
        "first_model_default_budget": str(server_cfg["models"][0].get("default_budget", 1.0)),
        "grpc_port": str(server_cfg["server"]["listen"].rsplit(":", 1)[1]),
        "metrics_port": str(server_cfg["server"].get("metrics_port", 9100)),
    }
    check(values["uid"] not in ("", "0"), "the Deployment sets no non-root runAsUser")
    for k, v in values.items():
        with open(os.path.join(args.out, k), "w") as f:
            f.write(v + "\n" if v else "")
    print(json.dumps(values, indent=1))
    return 0


# ---- serve: check a running server ----------------------------------------------------------

def container_running(args):
    if not args.container:
        return True
    out = subprocess.run(args.podman.split() + ["inspect", "--format", "{{.State.Running}}",
                                                args.container], capture_output=True, text=True)
    return out.stdout.strip() == "true"


def wait_ready(args, channel, timeout=180):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        check(container_running(args), f"container {args.container} exited while starting")
        try:
            if client.health_check(channel, "", timeout=2) == "SERVING":
                # Liveness first; readiness (every model) follows after warm-up.
                if client.health_check(channel, "topserve.v1.Inference", timeout=2) == "SERVING":
                    return
        except grpc.RpcError as e:
            last = f"{e.code().name}: {e.details()}"
        time.sleep(0.5)
    raise Failed(f"server at {args.grpc} not SERVING after {timeout}s (last: {last})")


def run_client(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, f"{' '.join(cmd[:3])} ...: exit {p.returncode}: {p.stderr.strip()}")
    return json.loads(p.stdout)


def check_report(rep, budget, where):
    tokens_in = int(rep["tokens_in"])
    kept = rep["tokens_kept"]
    check(tokens_in > 2, f"{where}: tokens_in {tokens_in}")
    check(all(a >= b for a, b in zip([tokens_in] + kept, kept)), f"{where}: tokens_kept grows: {kept}")
    flops, unpruned = int(rep["flops"]), int(rep["unpruned_flops"])
    check(0 < flops <= unpruned, f"{where}: flops {flops} vs unpruned {unpruned}")
    check(abs(rep["budget_requested"] - budget) < 1e-9, f"{where}: budget_requested "
          f"{rep['budget_requested']}, asked {budget}")
    check(rep.get("over_budget") or flops <= budget * unpruned * (1 + 1e-9),
          f"{where}: {flops} FLOPs over the budget {budget} x {unpruned}")


def check_classify(args, model):
    cpp = run_client([args.client, "--server", args.grpc, "classify", "--model", model,
                      "--budget", str(BUDGET), TEXT])
    py = run_client([args.python, os.path.join(ROOT, "tools", "client.py"), "-s", args.grpc,
                     "classify", "--model", model, "--budget", str(BUDGET), TEXT])
    for who, resp in (("topserve-client", cpp), ("client.py", py)):
        check(resp["model"] == model, f"{who}: model {resp['model']!r}, asked {model!r}")
        check(len(resp["results"]) == 1, f"{who}: {len(resp['results'])} results for 1 input")
        r = resp["results"][0]
        probs = r["probabilities"]
        check(abs(sum(probs.values()) - 1) < 1e-4, f"{who}: probabilities sum to {sum(probs.values())}")
        check(r["label"] == max(probs, key=probs.get), f"{who}: label {r['label']} is not the argmax")
        check(math.isclose(r["score"], probs[r["label"]], rel_tol=1e-6), f"{who}: score != p(label)")
        check_report(r["report"], BUDGET, f"{who} Classify")
    a, b = cpp["results"][0], py["results"][0]
    check(a["label"] == b["label"] and math.isclose(a["score"], b["score"], rel_tol=1e-5),
          f"the clients disagree: {a['label']} {a['score']} vs {b['label']} {b['score']}")
    print(f"  Classify {model}: {a['label']} {a['score']:.4f}, FLOPs fraction "
          f"{a['report']['flops_fraction']:.3f} at budget {BUDGET} (both clients)")
    if args.default_budget is None:
        return 2
    # A request without a budget runs at the config's default_budget.
    d = run_client([args.python, os.path.join(ROOT, "tools", "client.py"), "-s", args.grpc,
                    "classify", "--model", model, TEXT])
    got = d["results"][0]["report"]["budget_requested"]
    check(abs(got - args.default_budget) < 1e-9, f"a call without a budget ran at {got}, the "
          f"config's default_budget is {args.default_budget}")
    check_report(d["results"][0]["report"], args.default_budget, "client.py Classify, no budget")
    print(f"  Classify {model} without a budget: ran at the default budget {got}")
    return 3


def check_answer(args, model):
    cpp = run_client([args.client, "--server", args.grpc, "answer", "--model", model,
                      "--budget", str(BUDGET), "-q", QUESTION, "-c", CONTEXT])
    py = run_client([args.python, os.path.join(ROOT, "tools", "client.py"), "-s", args.grpc,
                     "answer", "--model", model, "--budget", str(BUDGET), "-q", QUESTION,
                     "-c", CONTEXT])
    for who, resp in (("topserve-client", cpp), ("client.py", py)):
        check(resp["model"] == model, f"{who}: model {resp['model']!r}, asked {model!r}")
        ans = resp["answer"]
        start, end = ans.get("start", 0), ans.get("end", 0)
        check(0 <= start < end <= len(CONTEXT), f"{who}: span [{start}, {end})")
        check(CONTEXT[start:end] == ans["text"], f"{who}: answer {ans['text']!r} is not "
              f"context[{start}:{end}] = {CONTEXT[start:end]!r}")
        check(len(resp["windows"]) >= 1, f"{who}: no window reports")
        for w in resp["windows"]:
            check_report(w["report"], BUDGET, f"{who} Answer")
    check(cpp["answer"] == py["answer"], f"the clients disagree: {cpp['answer']} vs {py['answer']}")
    print(f"  Answer {model}: {cpp['answer']['text']!r} (both clients)")


def check_reflection(channel):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import \
        ProtoReflectionDescriptorDatabase
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    want = {"topserve.v1.Inference", "grpc.health.v1.Health"}
    check(want <= services, f"reflection lists {sorted(services)}, missing {sorted(want - services)}")
    print(f"  reflection: {', '.join(sorted(services))}")


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        check(r.status == 200, f"{url}: HTTP {r.status}")
        return r.read().decode()


def metric(text, name, **labels):
    """The value of the one sample of `name` with exactly these labels (None if absent)."""
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return None


def check_metrics(args, calls):
    text = scrape(args.metrics)
    for model in {m for m, _ in calls}:
        check(metric(text, "topserve_model_ready", model=model) == 1,
              f"metrics: topserve_model_ready{{model={model!r}}} is not 1")
    for (model, method), n in calls.items():
        got = metric(text, "topserve_requests_total", model=model, method=method, code="OK")
        check(got == n, f"metrics: topserve_requests_total{{model={model!r},method={method!r},"
              f"code=\"OK\"}} = {got}, {n} calls were made")
    check(re.search(r"^topserve_build_info\{", text, re.M), "metrics: no topserve_build_info")
    print(f"  metrics: {len(text.splitlines())} lines; OK calls counted: "
          + ", ".join(f"{m}/{k}={n}" for (m, k), n in sorted(calls.items())))


def cmd_serve(args):
    channel = grpc.insecure_channel(args.grpc)
    t0 = time.time()
    wait_ready(args, channel)
    print(f"  ready after {time.time() - t0:.1f}s")
    for name in args.health:
        try:
            status = client.health_check(channel, name, timeout=5)
        except grpc.RpcError as e:
            status = f"{e.code().name}: {e.details()}"
        check(status == "SERVING", f"health {name!r}: {status}")
    print(f"  health SERVING: {', '.join(repr(n) for n in args.health)}")
    calls = {}
    if args.classify:
        calls[(args.classify, "Classify")] = check_classify(args, args.classify)
    if args.answer:
        check_answer(args, args.answer)
        calls[(args.answer, "Answer")] = 2
    check_reflection(channel)
    check_metrics(args, calls)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("k8s")
    k.add_argument("--k8s", default=os.path.join(ROOT, "deploy", "k8s"))
    k.add_argument("--out", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--grpc", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--client", required=True)
    s.add_argument("--python", default=sys.executable)
    s.add_argument("--health", action="append", default=[])
    s.add_argument("--classify")
    s.add_argument("--answer")
    s.add_argument("--default-budget", type=float,
                   help="check that a Classify call without a budget runs at this one")
    s.add_argument("--container")
    s.add_argument("--podman", default="podman")
    args = p.parse_args()
    try:
        return cmd_k8s(args) if args.cmd == "k8s" else cmd_serve(args)
    except Failed as e:
        print(f"container_check: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"container_check: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
