#!/usr/bin/env python3
"""Validates the Kubernetes manifests in deploy/k8s offline (no cluster, no kubectl).

  .venv/bin/python tests/deploy/validate_k8s.py [DIR]        # DIR defaults to deploy/k8s
  .venv/bin/python tests/deploy/validate_k8s.py --self-test  # the checks reject broken manifests

For every document of every file listed in DIR/kustomization.yaml:
  1. parse it with PyYAML (syntax errors and duplicate keys fail);
  2. validate it against the Kubernetes OpenAPI schema of its apiVersion and kind, with the
     `kubernetes-validate` package's bundled schemas in their strict form (unknown fields fail, as
     `kubectl apply`'s strict field validation does), for every Kubernetes version in
     KUBERNETES_VERSIONS; ServiceMonitor and PrometheusRule (Prometheus Operator CRDs, which the
     package does not carry) against tests/deploy/schemas/, written from the operator's CRDs for the
     fields these manifests may use, also strict; an unknown kind fails;
  3. topserve-specific cross-checks between the objects and the server config in the ConfigMap
     (ports, probe service names, drain grace vs terminationGracePeriodSeconds, selectors, ...).
Also checks that kustomization.yaml lists exactly the YAML files of DIR, and validates the
Prometheus adapter's rules (deploy/prometheus-adapter/rules.yaml): a ConfigMap, rules that read a
metric server/metrics.cc registers and serve the Pods metric the HPA asks for.

Runs in the project's environment (.venv, requirements/python.txt pins kubernetes-validate).
"""
import copy
import json
import os
import posixpath
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCHEMAS = os.path.join(HERE, "schemas")
# The oldest Kubernetes these manifests support (gRPC probes are GA since 1.27) and the newest
# the package knows.
KUBERNETES_VERSIONS = ("1.27", "1.37")

try:
    import jsonschema
    import kubernetes_validate
except ImportError as e:  # pragma: no cover - the message is the point
    sys.exit(f"FAIL: {e}: run scripts/install-deps.sh (it makes .venv from requirements/python.txt) "
             "and run this with .venv/bin/python")


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a mapping with the same key twice (kubectl does too)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_documents(text, file):
    try:
        docs = [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d is not None]
        return [], docs
    except yaml.YAMLError as e:
        return [f"{file}: {e}"], []


def _path(error):
    return "/" + "/".join(str(p) for p in error.absolute_path)


def _format(error):
    # The deepest, most specific messages of a oneOf/anyOf failure say what is wrong.
    best = jsonschema.exceptions.best_match([error])
    return f"schema: {_path(best)}: {best.message}"


CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}


def validate_object(obj):
    """Schema validation of one object: a list of error strings (empty = valid)."""
    if not isinstance(obj, dict):
        return ["not a mapping"]
    api, kind = obj.get("apiVersion"), obj.get("kind")
    errors = []
    crd = CRD_SCHEMAS.get((api, kind))
    if crd:
        with open(os.path.join(SCHEMAS, crd)) as f:
            schema = json.load(f)
        validator = jsonschema.Draft202012Validator(schema)
        errors += sorted({_format(e) for e in validator.iter_errors(obj)})
    elif not isinstance(api, str) or not isinstance(kind, str):
        return [f"unknown kind: apiVersion {api!r}, kind {kind!r}"]
    else:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                return [f"unknown kind: apiVersion {api!r}, kind {kind!r} (Kubernetes {version})"]
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{_format(e)} (Kubernetes {version})")
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        errors.append("metadata.name is missing")
    return errors


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "labels", "commonLabels",
                      "commonAnnotations", "images", "configMapGenerator", "secretGenerator",
                      "generatorOptions", "patches", "replicas", "namePrefix", "nameSuffix",
                      "components"}


def check_kustomization(k, directory):
    errors = []
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        errors.append("kustomization.yaml: apiVersion/kind must be kustomize.config.k8s.io/v1beta1 "
                      "Kustomization")
    for key in k:
        if key not in KUSTOMIZATION_KEYS:
            errors.append(f"kustomization.yaml: unknown field {key}")
    listed = k.get("resources") if isinstance(k.get("resources"), list) else []
    if not listed:
        errors.append("kustomization.yaml: no resources")
    for r in listed:
        if not isinstance(r, str) or not os.path.exists(os.path.join(directory, r)):
            errors.append(f"kustomization.yaml: resource {r} does not exist")
    for f in sorted(os.listdir(directory)):
        if re.search(r"\.ya?ml$", f) and f != "kustomization.yaml" and f not in listed:
            errors.append(f"kustomization.yaml: {f} is not listed in resources")
    return errors, [r for r in listed if isinstance(r, str)]


def matches(selector, labels):
    return bool(selector) and all((labels or {}).get(k) == v for k, v in selector.items())


def port_of(address):
    try:
        return int(str(address).rsplit(":", 1)[-1])
    except ValueError:
        return None


PROTO = os.path.join(ROOT, "proto", "topserve", "v1", "inference.proto")
GRPC_CODES = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
              "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
              "UNAUTHENTICATED"}
CLIENT_CONFIG = ("topserve-grpc-client", "service-config.json")
ADAPTER_RULES = os.path.join(ROOT, "deploy", "prometheus-adapter", "rules.yaml")
METRICS_SOURCE = os.path.join(ROOT, "server", "metrics.cc")


def load_adapter():
    """The Prometheus adapter's rules ConfigMap: (errors, objects)."""
    with open(ADAPTER_RULES) as f:
        errors, objects = parse_documents(f.read(), os.path.relpath(ADAPTER_RULES, ROOT))
    for obj in objects:
        errors += [f"{os.path.relpath(ADAPTER_RULES, ROOT)}: {e}" for e in validate_object(obj)]
    return errors, objects


def adapter_metrics(adapter_objects):
    """(errors, {custom metric name: source series}) from the adapter's rules."""
    sys.path.insert(0, HERE)
    import metrics_catalog
    with open(METRICS_SOURCE) as f:
        registered = metrics_catalog.from_source(f.read())
    errors, served = [], {}
    for cm in adapter_objects:
        where = f"prometheus-adapter ConfigMap {cm['metadata']['name']}"
        try:
            config = yaml.load((cm.get("data") or {}).get("config.yaml", ""), Loader=UniqueKeyLoader)
        except yaml.YAMLError as e:
            errors.append(f"{where}: config.yaml does not parse: {e}")
            continue
        rules = (config or {}).get("rules")
        if not isinstance(rules, list) or not rules:
            errors.append(f"{where}: config.yaml has no rules list")
            continue
        for i, rule in enumerate(rules):
            w = f"{where}: rules[{i}]"
            unknown = set(rule) - {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}
            if unknown:
                errors.append(f"{w}: unknown fields {sorted(unknown)}")
            m = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", str(rule.get("seriesQuery", "")))
            series = m.group(1) if m else None
            if series not in registered:
                errors.append(f"{w}: seriesQuery names {series!r}, which server/metrics.cc does "
                              "not register")
            overrides = ((rule.get("resources") or {}).get("overrides") or {})
            for label in ("namespace", "pod"):
                if (overrides.get(label) or {}).get("resource") != label:
                    errors.append(f"{w}: resources.overrides does not map label {label} to the "
                                  f"{label} resource (a Pods metric needs both)")
            query = str(rule.get("metricsQuery", ""))
            for placeholder in ("<<.LabelMatchers>>", "<<.GroupBy>>"):
                if placeholder not in query:
                    errors.append(f"{w}: metricsQuery lacks {placeholder}")
            if "<<.Series>>" not in query and series not in query:
                errors.append(f"{w}: metricsQuery reads neither <<.Series>> nor {series}")
            name = rule.get("name") or {}
            if name.get("matches") and series and not re.search(name["matches"], series):
                errors.append(f"{w}: name.matches {name['matches']!r} does not match {series}")
            served[name.get("as") or series] = series
    return errors, served


def proto_services():
    with open(PROTO) as f:
        text = f.read()
    package = re.search(r"^package ([\w.]+);", text, re.M).group(1)
    return {f"{package}.{name}" for name in re.findall(r"^service (\w+)", text, re.M)}


def _duration(value):
    """Seconds of a protobuf JSON duration ("0.05s"), or None when it is not one."""
    m = re.fullmatch(r"(\d+(?:\.\d{1,9})?)s", value) if isinstance(value, str) else None
    return float(m.group(1)) if m else None


def check_client_config(objects):
    """The gRPC service config clients are told to use (retries, balancing)."""
    name, key = CLIENT_CONFIG
    where = f"ConfigMap {name}"
    cm = next((o for o in objects if o.get("kind") == "ConfigMap"
               and o["metadata"]["name"] == name), None)
    if cm is None:
        return [f"no ConfigMap {name} with the clients' gRPC service config"]
    try:
        config = json.loads((cm.get("data") or {}).get(key, ""))
    except json.JSONDecodeError as e:
        return [f"{where}: {key} is not JSON: {e}"]
    errors = []
    if not isinstance(config, dict):
        return [f"{where}: {key} is not a JSON object"]
    policies = [next(iter(p)) for p in config.get("loadBalancingConfig") or [] if isinstance(p, dict)]
    if "round_robin" not in policies:
        errors.append(f"{where}: loadBalancingConfig has no round_robin (per-call balancing over "
                      "the headless Service's addresses)")
    services = proto_services()
    retried = set()
    for mc in config.get("methodConfig") or []:
        for n in mc.get("name") or []:
            if n.get("service") not in services:
                errors.append(f"{where}: methodConfig names service {n.get('service')!r}, not one "
                              f"of the .proto's ({', '.join(sorted(services))})")
        rp = mc.get("retryPolicy")
        if rp is None:
            continue
        unknown = set(rp) - {"maxAttempts", "initialBackoff", "maxBackoff", "backoffMultiplier",
                             "retryableStatusCodes"}
        if unknown:
            errors.append(f"{where}: retryPolicy has unknown fields {sorted(unknown)}")
        attempts = rp.get("maxAttempts")
        if not (isinstance(attempts, int) and 2 <= attempts <= 5):
            errors.append(f"{where}: retryPolicy.maxAttempts {attempts!r} is not in [2, 5] "
                          "(gRPC caps it at 5)")
        for k in ("initialBackoff", "maxBackoff"):
            if not (_duration(rp.get(k)) or 0) > 0:
                errors.append(f"{where}: retryPolicy.{k} {rp.get(k)!r} is not a positive "
                              "duration like \"0.1s\"")
        mult = rp.get("backoffMultiplier")
        if not (isinstance(mult, (int, float)) and mult > 0):
            errors.append(f"{where}: retryPolicy.backoffMultiplier {mult!r} is not > 0")
        codes = rp.get("retryableStatusCodes") or []
        for c in codes:
            if c not in GRPC_CODES:
                errors.append(f"{where}: retryableStatusCodes has {c!r}, not a gRPC status code")
        if "UNAVAILABLE" not in codes:
            errors.append(f"{where}: retryPolicy does not retry UNAVAILABLE (draining pods, full "
                          "queues)")
        for n in mc.get("name") or []:
            retried.add(n.get("service"))
    if "topserve.v1.Inference" not in retried:
        errors.append(f"{where}: no retryPolicy for topserve.v1.Inference")
    return errors


def cross_check(objects, adapter_objects=None):
    """topserve-specific consistency of the whole set of objects (and the adapter's rules)."""
    errors = check_client_config(objects)
    if adapter_objects is None:
        aerrs, adapter_objects = load_adapter()
        errors += aerrs
    aerrs, served = adapter_metrics(adapter_objects)
    errors += aerrs

    def by_kind(kind):
        return [o for o in objects if o.get("kind") == kind]

    def one(kind):
        found = by_kind(kind)
        if not found:
            errors.append(f"no {kind}")
        return found

    deployments = one("Deployment")
    for kind in ("Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "ServiceMonitor", "PrometheusRule"):
        one(kind)

    for d in deployments:
        where = f"Deployment {d['metadata']['name']}"
        pod = d["spec"]["template"]["spec"]
        pod_labels = (d["spec"]["template"].get("metadata") or {}).get("labels") or {}
        if not matches((d["spec"].get("selector") or {}).get("matchLabels"), pod_labels):
            errors.append(f"{where}: selector does not match the pod labels")
        containers = pod["containers"]
        c = next((x for x in containers if x.get("name") == "topserve"), containers[0])
        volumes = pod.get("volumes") or []

        cm_name = next((v["configMap"]["name"] for v in volumes if v.get("configMap")), None)
        cm = next((x for x in by_kind("ConfigMap") if x["metadata"]["name"] == cm_name), None)
        config = None
        if cm is None:
            errors.append(f"{where}: mounts ConfigMap {cm_name}, which is not in the manifests")
        elif not isinstance((cm.get("data") or {}).get("config.yaml"), str):
            errors.append(f"ConfigMap {cm_name}: no config.yaml key")
        else:
            try:
                config = yaml.load(cm["data"]["config.yaml"], Loader=UniqueKeyLoader) or {}
            except yaml.YAMLError as e:
                errors.append(f"ConfigMap {cm_name}: config.yaml does not parse: {e}")
        cm_volumes = {v["name"] for v in volumes if v.get("configMap")}
        mount = next((m for m in c.get("volumeMounts") or [] if m["name"] in cm_volumes), None)
        args = c.get("args") or []
        config_path = (args[args.index("--config") + 1] if "--config" in args[:-1]
                       else "/etc/topserve/config.yaml")
        if mount is None or posixpath.dirname(config_path) != mount["mountPath"]:
            errors.append(f"{where}: the config file {config_path} is not in the ConfigMap's mount")

        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        for name in ("grpc", "metrics"):
            if name not in ports:
                errors.append(f"{where}: no container port named {name}")
        model_names = []
        if config is not None:
            server = config.get("server") or {}
            model_names = [m.get("name") for m in config.get("models") or []]
            if port_of(server.get("listen")) != ports.get("grpc"):
                errors.append(f"{where}: grpc containerPort {ports.get('grpc')} != config "
                              f"server.listen {server.get('listen')}")
            if server.get("metrics_port") != ports.get("metrics"):
                errors.append(f"{where}: metrics containerPort {ports.get('metrics')} != config "
                              f"server.metrics_port {server.get('metrics_port')}")
            # A drain takes the grace period for the calls, and ends no later than 1.1 x the
            # connection age after SIGTERM (Server::Linger); server/config.h defaults.
            grace = server.get("drain_grace_seconds", 30)
            age = server.get("max_connection_age_seconds", 10)
            drain = max(grace, 1.1 * age + 0.25)
            if not (pod.get("terminationGracePeriodSeconds") or 0) > drain + 5:
                errors.append(f"{where}: terminationGracePeriodSeconds "
                              f"{pod.get('terminationGracePeriodSeconds')} must exceed the longest "
                              f"drain, max(server.drain_grace_seconds {grace}, 1.1 x "
                              f"server.max_connection_age_seconds {age}), by more than 5 s")
            if not model_names:
                errors.append(f"ConfigMap {cm_name}: no models")
        readiness_names = set(model_names) | {"topserve.v1.Inference"}

        def grpc_probe(name):
            probe = c.get(name) or {}
            if "grpc" not in probe:
                errors.append(f"{where}: {name} is not a gRPC probe")
                return None
            if probe["grpc"].get("port") != ports.get("grpc"):
                errors.append(f"{where}: {name} port {probe['grpc'].get('port')} != grpc port "
                              f"{ports.get('grpc')}")
            return probe["grpc"].get("service", "")

        live = grpc_probe("livenessProbe")
        if live not in (None, ""):
            errors.append(f'{where}: livenessProbe must ask for service "" (process alive), '
                          f'not "{live}"')
        for name in ("readinessProbe", "startupProbe"):
            svc = grpc_probe(name)
            if svc is not None and svc not in readiness_names:
                errors.append(f'{where}: {name} asks for service "{svc}", which is neither a '
                              f'configured model ({", ".join(map(str, model_names))}) nor '
                              "topserve.v1.Inference")
        resources = c.get("resources") or {}
        for r in ("requests", "limits"):
            for k in ("cpu", "memory"):
                if not (resources.get(r) or {}).get(k):
                    errors.append(f"{where}: resources.{r}.{k} is not set")
        csc, psc = c.get("securityContext") or {}, pod.get("securityContext") or {}
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            errors.append(f"{where}: runAsNonRoot is not true")
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        if not (isinstance(uid, int) and uid > 0):
            errors.append(f"{where}: runAsUser must be a non-zero uid")
        omp = next((e for e in c.get("env") or [] if e.get("name") == "OMP_WAIT_POLICY"), {})
        if omp.get("value") != "passive":
            errors.append(f"{where}: env OMP_WAIT_POLICY=passive is not set")

        headless = [s for s in by_kind("Service") if s["spec"].get("clusterIP") == "None"
                    and matches(s["spec"].get("selector"), pod_labels)
                    and any(p.get("name") == "grpc" for p in s["spec"]["ports"])]
        if not headless:
            errors.append(f"no headless Service (clusterIP: None) with a grpc port selecting the "
                          f"pods of {where}: clients cannot balance per call")
        for s in by_kind("Service"):
            if not matches(s["spec"].get("selector"), pod_labels):
                errors.append(f"Service {s['metadata']['name']}: selector does not match the pods "
                              f"of {where}")
                continue
            for p in s["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                ok = target in ports if isinstance(target, str) else target in ports.values()
                if not ok:
                    errors.append(f"Service {s['metadata']['name']}: port {p.get('name')} targets "
                                  f"{target}, not a container port")
                if p.get("name") == "grpc" and p.get("appProtocol") != "grpc":
                    errors.append(f"Service {s['metadata']['name']}: grpc port lacks "
                                  "appProtocol: grpc")
        for p in by_kind("PodDisruptionBudget"):
            if not matches((p["spec"].get("selector") or {}).get("matchLabels"), pod_labels):
                errors.append(f"PodDisruptionBudget {p['metadata']['name']}: selector does not "
                              f"match {where}")
        for h in by_kind("HorizontalPodAutoscaler"):
            ref = h["spec"]["scaleTargetRef"]
            if ref.get("kind") != "Deployment" or ref.get("name") != d["metadata"]["name"]:
                errors.append(f"HorizontalPodAutoscaler {h['metadata']['name']}: does not target "
                              f"{where}")
            metrics = h["spec"].get("metrics") or []
            hname = f"HorizontalPodAutoscaler {h['metadata']['name']}"
            if not metrics:
                errors.append(f"{hname}: no metrics")
            for m in metrics:
                if m.get("type") == "Resource":
                    rname = (m.get("resource") or {}).get("name")
                    if not (resources.get("requests") or {}).get(rname):
                        errors.append(f"{hname}: {rname} utilisation needs a {rname} request")
                elif m.get("type") == "Pods":
                    metric = ((m.get("pods") or {}).get("metric") or {}).get("name")
                    if metric not in served:
                        errors.append(f"{hname}: Pods metric {metric!r} is not served by the "
                                      f"Prometheus adapter rules ({', '.join(sorted(served))})")
                    if ((m.get("pods") or {}).get("target") or {}).get("type") != "AverageValue":
                        errors.append(f"{hname}: Pods metric {metric!r} needs an AverageValue "
                                      "target")
                else:
                    errors.append(f"{hname}: metric type {m.get('type')!r} is not checked here")
    for sm in by_kind("ServiceMonitor"):
        services = [s for s in by_kind("Service")
                    if matches((sm["spec"].get("selector") or {}).get("matchLabels"),
                               s["metadata"].get("labels"))]
        if len(services) != 1:
            errors.append(f"ServiceMonitor {sm['metadata']['name']}: selects {len(services)} "
                          "Services (want exactly 1, or pods are scraped twice)")
        for ep in sm["spec"].get("endpoints") or []:
            for s in services:
                if not any(p.get("name") == ep.get("port") for p in s["spec"]["ports"]):
                    errors.append(f"ServiceMonitor {sm['metadata']['name']}: Service "
                                  f"{s['metadata']['name']} has no port {ep.get('port')}")
    return errors


def load_file(directory, file):
    with open(os.path.join(directory, file)) as f:
        return parse_documents(f.read(), file)


def validate_dir(directory):
    errors = []
    kfile = os.path.join(directory, "kustomization.yaml")
    if not os.path.exists(kfile):
        return [f"{kfile} is missing"], 0
    kerr, kdocs = load_file(directory, "kustomization.yaml")
    errors += kerr
    kerrs, resources = check_kustomization(kdocs[0] if kdocs else {}, directory)
    errors += kerrs
    valid = []
    for file in resources:
        if not os.path.exists(os.path.join(directory, file)):
            continue
        perr, objects = load_file(directory, file)
        errors += perr
        if not objects and not perr:
            errors.append(f"{file}: no documents")
        for obj in objects:
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            name = f"{file}: {obj.get('kind', '?') if isinstance(obj, dict) else '?'} " \
                   f"{(meta or {}).get('name', '?')}"
            errs = validate_object(obj)
            errors += [f"{name}: {e}" for e in errs]
            if not errs:
                print(f"ok   {name}")
                valid.append(obj)
    aerrs, adapter_objects = load_adapter()
    errors += aerrs
    if not aerrs:
        print(f"ok   {os.path.relpath(ADAPTER_RULES, ROOT)}: ConfigMap "
              f"{adapter_objects[0]['metadata']['name']}")
    if not errors:
        errors += [f"cross-check: {e}" for e in cross_check(valid, adapter_objects)]
    return errors, len(valid) + len(adapter_objects)


def self_test():
    """Negative checks: each broken object must be rejected, for the reason given."""
    directory = os.path.join(ROOT, "deploy", "k8s")

    def load(file):
        return load_file(directory, file)[1]

    deployment = load("deployment.yaml")[0]
    service_monitor = load("servicemonitor.yaml")[0]
    rule = load("prometheusrule.yaml")[0]

    def edit(obj, fn):
        obj = copy.deepcopy(obj)
        fn(obj)
        return obj

    def container(d):
        return d["spec"]["template"]["spec"]["containers"][0]

    def typo_probe(d):
        p = container(d)["readinessProbe"]
        p["grcp"] = p.pop("grpc")

    cases = [
        ("real Deployment (must pass)", deployment, None),
        ("real ServiceMonitor (must pass)", service_monitor, None),
        ("real PrometheusRule (must pass)", rule, None),
        ("replicas as a string", edit(deployment, lambda d: d["spec"].update(replicas="two")),
         r"/spec/replicas: 'two' is not of type 'integer'"),
        ("containerPort as a string",
         edit(deployment, lambda d: container(d)["ports"][0].update(containerPort="8500")),
         r"containerPort: '8500' is not of type 'integer'"),
        ("probe typo grcp", edit(deployment, typo_probe), r"readinessProbe: .*'grcp' was unexpected"),
        ("misspelled terminationGracePeriod",
         edit(deployment, lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriod=45)),
         r"/spec/template/spec: .*'terminationGracePeriod' was unexpected"),
        ("containers missing",
         edit(deployment, lambda d: d["spec"]["template"]["spec"].pop("containers")),
         r"'containers' is a required property"),
        ("ServiceMonitor interval as a number",
         edit(service_monitor, lambda s: s["spec"]["endpoints"][0].update(interval=15)),
         r"/spec/endpoints/0/interval: 15 is not of type 'string'"),
        ("ServiceMonitor typo scrapeTimout",
         edit(service_monitor, lambda s: s["spec"]["endpoints"][0].update(scrapeTimout="5s")),
         r"/spec/endpoints/0: .*'scrapeTimout' was unexpected"),
        ("PrometheusRule typo experssion",
         edit(rule, lambda r: r["spec"]["groups"][1]["rules"][0].update(experssion="up")),
         r"/spec/groups/1/rules/0: .*'experssion' was unexpected"),
        ("PrometheusRule rules not a list",
         edit(rule, lambda r: r["spec"]["groups"][0].update(rules="x")),
         r"/spec/groups/0/rules: 'x' is not of type 'array'"),
        ("unknown kind", {"apiVersion": "v1", "kind": "Deploymnt", "metadata": {"name": "x"}},
         r"unknown kind"),
        ("unknown CRD group", {"apiVersion": "example.com/v1", "kind": "Widget",
                               "metadata": {"name": "x"}}, r"unknown kind"),
    ]
    failed = 0
    for name, obj, want in cases:
        errs = validate_object(obj)
        ok = not errs if want is None else any(re.search(want, e) for e in errs)
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {'; '.join(errs) if errs else 'valid'}")
        failed += not ok

    _, dup = parse_documents("a: 1\na: 2\n", "dup.yaml")
    dup_err, _ = parse_documents("a: 1\na: 2\n", "dup.yaml")
    ok = not dup and any("duplicate key 'a'" in e for e in dup_err)
    print(f"{'ok  ' if ok else 'FAIL'} duplicate keys are rejected: {'; '.join(dup_err)}")
    failed += not ok

    objects = []
    for f in sorted(os.listdir(directory)):
        if f.endswith(".yaml") and f != "kustomization.yaml":
            objects += load(f)
    broken = copy.deepcopy(objects)
    cm = next(o for o in broken if o["kind"] == "ConfigMap")
    cm["data"]["config.yaml"] = re.sub(r"drain_grace_seconds: *[0-9.]+", "drain_grace_seconds: 60",
                                       cm["data"]["config.yaml"])
    dep = next(o for o in broken if o["kind"] == "Deployment")
    container(dep)["readinessProbe"]["grpc"]["service"] = "no-such-model"
    xerrs = cross_check(broken)
    for name, pattern in (("drain grace > termination grace", r"terminationGracePeriodSeconds"),
                          ("readiness probe on an unknown model",
                           r'readinessProbe asks for service "no-such-model"')):
        ok = any(re.search(pattern, e) for e in xerrs)
        print(f"{'ok  ' if ok else 'FAIL'} cross-check {name}")
        failed += not ok
    aged = copy.deepcopy(objects)
    cm = next(o for o in aged if o["kind"] == "ConfigMap")
    cm["data"]["config.yaml"] = re.sub(r"max_connection_age_seconds: *[0-9.]+",
                                       "max_connection_age_seconds: 40", cm["data"]["config.yaml"])
    ok = any(re.search(r"terminationGracePeriodSeconds.*max_connection_age_seconds 40", e)
             for e in cross_check(aged))
    print(f"{'ok  ' if ok else 'FAIL'} cross-check connection age outlasting the termination grace")
    failed += not ok

    def client_json(fn):
        objs = copy.deepcopy(objects)
        cm = next(o for o in objs if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"] == CLIENT_CONFIG[0])
        cm["data"][CLIENT_CONFIG[1]] = fn(cm["data"][CLIENT_CONFIG[1]])
        return objs

    def retry(**changes):
        def fn(text):
            config = json.loads(text)
            config["methodConfig"][0]["retryPolicy"].update(changes)
            return json.dumps(config)
        return fn

    def hpa_metric(name):
        objs = copy.deepcopy(objects)
        h = next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler")
        next(m for m in h["spec"]["metrics"] if m["type"] == "Pods")["pods"]["metric"]["name"] = name
        return objs

    def no_headless(objs):
        return [o for o in objs if not (o["kind"] == "Service"
                                        and o["spec"].get("clusterIP") == "None")]

    for name, objs, pattern in (
            ("client config not JSON", client_json(lambda t: t + "}"), r"is not JSON"),
            ("retry without UNAVAILABLE", client_json(retry(retryableStatusCodes=["CANCELLED"])),
             r"does not retry UNAVAILABLE"),
            ("retry code typo", client_json(retry(retryableStatusCodes=["UNAVAILABLE", "CANCELED"])),
             r"'CANCELED', not a gRPC status code"),
            ("maxAttempts 6", client_json(retry(maxAttempts=6)), r"maxAttempts 6 is not in"),
            ("backoff without unit", client_json(retry(initialBackoff="0.1")),
             r"initialBackoff '0.1' is not a positive duration"),
            ("unknown service", client_json(lambda t: t.replace("topserve.v1.Inference",
                                                                "topserve.v1.Inferense")),
             r"names service 'topserve.v1.Inferense'"),
            ("no headless Service", no_headless(objects), r"no headless Service"),
            ("HPA on a metric the adapter does not serve", hpa_metric("topserve_queue_lenght"),
             r"Pods metric 'topserve_queue_lenght' is not served")):
        xerrs = cross_check(objs)
        ok = any(re.search(pattern, e) for e in xerrs)
        print(f"{'ok  ' if ok else 'FAIL'} cross-check {name}: {'; '.join(xerrs) or 'consistent'}")
        failed += not ok
    _, adapter = load_adapter()
    for name, edit_rule, pattern in (
            ("adapter series not registered",
             lambda r: r.update(seriesQuery='topserve_inflight{namespace!="",pod!=""}'),
             r"seriesQuery names 'topserve_inflight', which server/metrics.cc does not register"),
            ("adapter rule without the pod resource",
             lambda r: r["resources"]["overrides"].pop("pod"), r"does not map label pod"),
            ("adapter query without label matchers",
             lambda r: r.update(metricsQuery="sum(topserve_inflight_requests)"),
             r"metricsQuery lacks <<.LabelMatchers>>"),
            ("adapter rule renamed", lambda r: r["name"].update({"as": "inflight"}),
             r"Pods metric 'topserve_inflight_requests_avg2m' is not served")):
        broken_adapter = copy.deepcopy(adapter)
        config = yaml.safe_load(broken_adapter[0]["data"]["config.yaml"])
        edit_rule(config["rules"][0])
        broken_adapter[0]["data"]["config.yaml"] = yaml.safe_dump(config)
        xerrs = cross_check(objects, broken_adapter)
        ok = any(re.search(pattern, e) for e in xerrs)
        print(f"{'ok  ' if ok else 'FAIL'} cross-check {name}: {'; '.join(xerrs) or 'consistent'}")
        failed += not ok
    clean = cross_check(objects)
    print(f"{'FAIL' if clean else 'ok  '} cross-check of the real manifests: "
          f"{'; '.join(clean) or 'consistent'}")
    failed += bool(clean)
    return failed


def main(argv):
    if argv and argv[0] == "--self-test":
        failed = self_test()
        print(f"self-test: {failed} check(s) FAILED" if failed
              else "self-test: every broken manifest was rejected")
        return 1 if failed else 0
    directory = os.path.abspath(argv[0] if argv else os.path.join(ROOT, "deploy", "k8s"))
    errors, count = validate_dir(directory)
    for e in errors:
        print(f"FAIL {e}")
    rel = os.path.relpath(directory, ROOT)
    if errors:
        print(f"{rel}: {len(errors)} problem(s)")
        return 1
    print(f"{rel}: {count} objects valid and consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
