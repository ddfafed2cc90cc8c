#!/usr/bin/env python3
"""Checks on rendered manifests that a schema cannot express (check.sh runs it per overlay).

  lint.py RENDERED.yaml                  the checks below; exit 1 naming every failure
  lint.py --same RENDERED.yaml OTHER.yaml  exit 1 unless both hold the same objects (lists
                                         that Kubernetes merges by key compared as sets)

Checks:
- the Prometheus Operator objects (ServiceMonitor, PrometheusRule), which kubernetes-validate
  has no schema for, against the subset of their CRD schemas used here (unknown fields fail);
  the PrometheusRule's groups equal config/alerts.yaml's;
- every container: non-root, read-only root filesystem, no privilege escalation, all
  capabilities dropped, CPU and memory requests and limits;
- the gateway: liveness /healthz and readiness /readyz on the admin port, a preStop hook, and
  terminationGracePeriodSeconds longer than the preStop sleep plus the config's drain_timeout;
- every Service, PodDisruptionBudget, NetworkPolicy and ServiceMonitor selects a pod template or
  Service that exists, and every named port it uses exists there; the HPA's target exists;
- every ConfigMap volume names a ConfigMap in the output.
"""

import re
import sys
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parent.parent.parent
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "ports": None}

SELECTOR = {"type": "object", "additionalProperties": False,
            "properties": {"matchLabels": {"type": "object",
                                           "additionalProperties": {"type": "string"}}}}
METADATA = {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                           "annotations": {"type": "object"}}}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
ENDPOINT = {"type": "object", "additionalProperties": False,
            "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                           "scheme": {"enum": ["http", "https"]},
                           "interval": DURATION, "scrapeTimeout": DURATION}}
RULE = {"type": "object", "required": ["expr"], "additionalProperties": False,
        "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                       "expr": {"type": ["string", "integer"]}, "for": DURATION,
                       "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                       "annotations": {"type": "object",
                                       "additionalProperties": {"type": "string"}}}}
GROUP = {"type": "object", "required": ["name", "rules"], "additionalProperties": False,
         "properties": {"name": {"type": "string", "minLength": 1}, "interval": DURATION,
                        "rules": {"type": "array", "items": RULE}}}


def crd(spec):
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "additionalProperties": False,
            "properties": {"apiVersion": {}, "kind": {}, "metadata": METADATA, "spec": spec}}


SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): crd(
        {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
         "properties": {"jobLabel": {"type": "string"}, "selector": SELECTOR,
                        "namespaceSelector": {"type": "object"},
                        "endpoints": {"type": "array", "minItems": 1, "items": ENDPOINT}}}),
    ("monitoring.coreos.com/v1", "PrometheusRule"): crd(
        {"type": "object", "required": ["groups"], "additionalProperties": False,
         "properties": {"groups": {"type": "array", "items": GROUP}}}),
}


def load(path):
    return [o for o in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if o]


def key(obj):
    return (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])


def normalise(value, field=None):
    if isinstance(value, dict):
        return {k: normalise(v, k) for k, v in value.items()}
    if isinstance(value, list):
        items = [normalise(v) for v in value]
        if field in MERGE_KEYS and all(isinstance(i, dict) for i in items):
            items.sort(key=lambda i: yaml.safe_dump(i, sort_keys=True))
        return items
    return value


def same(a_path, b_path):
    a = {key(o): normalise(o) for o in load(a_path)}
    b = {key(o): normalise(o) for o in load(b_path)}
    failures = [f"only in {a_path}: {k}" for k in sorted(set(a) - set(b), key=str)]
    failures += [f"only in {b_path}: {k}" for k in sorted(set(b) - set(a), key=str)]
    failures += [f"differs: {k}" for k in sorted(set(a) & set(b), key=str) if a[k] != b[k]]
    return failures


def seconds(text):
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def pod_templates(objects):
    return {o["metadata"]["name"]: o["spec"]["template"] for o in objects
            if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")}


def selects(selector, labels):
    match = selector.get("matchLabels", selector)
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def container_ports(template):
    return {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}


def lint(path):
    objects = load(path)
    failures = []
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    templates = pod_templates(objects)

    for o in objects:
        schema = SCHEMAS.get((o["apiVersion"], o["kind"]))
        if schema is None and "monitoring.coreos.com" in o["apiVersion"]:
            failures.append(f"{o['kind']} {o['metadata']['name']}: no schema in lint.py")
        elif schema is not None:
            for e in jsonschema.Draft7Validator(schema).iter_errors(o):
                where = ".".join(str(p) for p in e.absolute_path)
                failures.append(f"{o['kind']} {o['metadata']['name']}: {where}: {e.message}")

    alerts = yaml.safe_load((REPO / "config" / "alerts.yaml").read_text(encoding="utf-8"))
    for rule in by_kind.get("PrometheusRule", []):
        if rule["spec"]["groups"] != alerts["groups"]:
            failures.append(f"PrometheusRule {rule['metadata']['name']}: groups differ from "
                            "config/alerts.yaml (run deploy/kubernetes/rules.py --write)")

    for name, t in templates.items():
        spec = t["spec"]
        pod_sc = spec.get("securityContext", {})
        if not pod_sc.get("runAsNonRoot") or not pod_sc.get("runAsUser"):
            failures.append(f"{name}: pod must set runAsNonRoot and a runAsUser")
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            if sc.get("readOnlyRootFilesystem") is not True:
                failures.append(f"{where}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                failures.append(f"{where}: allowPrivilegeEscalation must be false")
            if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc["capabilities"].get("add"):
                failures.append(f"{where}: capabilities must drop ALL and add none")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(kind, {})):
                    failures.append(f"{where}: resources.{kind} needs cpu and memory")
        for v in spec.get("volumes", []):
            cm = v.get("configMap", {}).get("name")
            if cm and not any(o["metadata"]["name"] == cm for o in by_kind.get("ConfigMap", [])):
                failures.append(f"{name}: volume {v['name']} names ConfigMap {cm}, not rendered")

    gateway = templates.get("certgate")
    config_maps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}
    if gateway is None:
        failures.append("no Deployment certgate (the gateway)")
    else:
        c = gateway["spec"]["containers"][0]
        probes = {p: c.get(p, {}).get("httpGet", {}) for p in ("livenessProbe", "readinessProbe")}
        if probes["livenessProbe"].get("path") != "/healthz" or probes["livenessProbe"].get("port") != "admin":
            failures.append("gateway: livenessProbe must GET /healthz on the admin port")
        if probes["readinessProbe"].get("path") != "/readyz" or probes["readinessProbe"].get("port") != "admin":
            failures.append("gateway: readinessProbe must GET /readyz on the admin port")
        stop = c.get("lifecycle", {}).get("preStop", {})
        pre_stop = 0.0
        if "sleep" in stop:
            pre_stop = float(stop["sleep"]["seconds"])
        elif "exec" in stop:
            cmd = stop["exec"]["command"]
            pre_stop = float(cmd[-1]) if cmd[0].endswith("sleep") else 0.0
        else:
            failures.append("gateway: no preStop hook")
        cm_name = next((v["configMap"]["name"] for v in gateway["spec"]["volumes"] if "configMap" in v), None)
        config = yaml.safe_load(config_maps[cm_name]["data"]["certgate.yaml"]) if cm_name in config_maps else {}
        drain = seconds(str(config.get("server", {}).get("drain_timeout", "30s")))
        grace = gateway["spec"].get("terminationGracePeriodSeconds", 30)
        if not grace > pre_stop + drain:
            failures.append(f"gateway: terminationGracePeriodSeconds {grace} must exceed the preStop "
                            f"sleep ({pre_stop:g} s) plus drain_timeout ({drain:g} s)")
        admin = config.get("admin", {})
        if not str(admin.get("listen", "")).endswith(":9901") or not admin.get("allow_remote"):
            failures.append("gateway config: admin must listen on :9901 with allow_remote (probes)")

    services = {o["metadata"]["name"]: o for o in by_kind.get("Service", [])}
    for s in services.values():
        targets = [t for t in templates.values() if selects(s["spec"]["selector"], t["metadata"]["labels"])]
        if not targets:
            failures.append(f"Service {s['metadata']['name']}: selects no pod template")
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort")
            if isinstance(tp, str) and not all(tp in container_ports(t) for t in targets):
                failures.append(f"Service {s['metadata']['name']}: targetPort {tp} is not a container port")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for o in by_kind.get(kind, []):
            sel = o["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]
            targets = [t for t in templates.values() if selects(sel, t["metadata"]["labels"])]
            if not targets:
                failures.append(f"{kind} {o['metadata']['name']}: selects no pod template")
            for rule in o["spec"].get("ingress", []) if kind == "NetworkPolicy" else []:
                for p in rule.get("ports", []):
                    if isinstance(p.get("port"), str) and not all(p["port"] in container_ports(t) for t in targets):
                        failures.append(f"NetworkPolicy {o['metadata']['name']}: port {p['port']} is not a container port")
    for sm in by_kind.get("ServiceMonitor", []):
        chosen = [s for s in services.values() if selects(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        if not chosen:
            failures.append(f"ServiceMonitor {sm['metadata']['name']}: selects no Service")
        for e in sm["spec"]["endpoints"]:
            if not all(e["port"] in {p.get("name") for p in s["spec"]["ports"]} for s in chosen):
                failures.append(f"ServiceMonitor {sm['metadata']['name']}: port {e['port']} not on the Service")
        job = sm["spec"].get("jobLabel")
        if job and not all(s["metadata"]["labels"].get(job) == "certgate" for s in chosen):
            failures.append(f"ServiceMonitor {sm['metadata']['name']}: job label is not `certgate` "
                            "(CertgateTargetDown expects job=\"certgate\")")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        if hpa["spec"]["scaleTargetRef"]["name"] not in templates:
            failures.append(f"HorizontalPodAutoscaler {hpa['metadata']['name']}: no such target")
    return failures


def main(argv):
    if len(argv) == 4 and argv[1] == "--same":
        failures = same(argv[2], argv[3])
    elif len(argv) == 2:
        failures = lint(argv[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for f in failures:
        print(f"{argv[-1]}: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
