#!/usr/bin/env bash
# Renders every overlay and validates each object offline. Run from anywhere; CI runs it from
# .ci/run. Needs python3; installs kubernetes-validate (PyPI, bundles the Kubernetes JSON
# schemas) when missing.
#
# 1. base/prometheusrule.yaml is what config/alerts.yaml makes (rules.py);
# 2. each overlay is rendered by render.py (kustomize subset, no binary needed); where kubectl
#    is installed, `kubectl kustomize` renders it too and both must hold the same objects;
# 3. kubernetes-validate --strict checks every built-in object against the schemas of the
#    oldest and newest Kubernetes versions we support (unknown fields fail);
# 4. lint.py checks the Prometheus Operator objects against their CRD schema subset, and what a
#    schema cannot say (security context, probes, grace period vs drain_timeout, selectors,
#    ports); promtool checks the rendered PrometheusRule's rules where it is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
versions=(1.29.0 1.37.0)

if ! python3 -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
  python3 -m pip install -q kubernetes-validate \
    || python3 -m pip install -q --break-system-packages kubernetes-validate
fi

python3 rules.py

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for overlay in overlays/*/; do
  name=$(basename "$overlay")
  rendered="$out/$name.yaml"
  python3 render.py "$overlay" > "$rendered"
  if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize "$overlay" > "$out/$name.kubectl.yaml"
    python3 lint.py --same "$rendered" "$out/$name.kubectl.yaml"
    echo "$name: render.py agrees with kubectl kustomize"
  fi
  for v in "${versions[@]}"; do
    # CRDs have no bundled schema: kubernetes-validate warns about them; lint.py checks them.
    python3 -m kubernetes_validate --strict --quiet --no-warn -k "$v" "$rendered"
  done
  python3 lint.py "$rendered"
  if command -v promtool >/dev/null 2>&1; then
    python3 - "$rendered" > "$out/$name.rules.yaml" <<'PY'
import sys, yaml
rules = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o and o["kind"] == "PrometheusRule"]
assert len(rules) == 1, "expected one PrometheusRule"
yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, sys.stdout)
PY
    promtool check rules "$out/$name.rules.yaml" >/dev/null
  fi
  echo "$name: $(grep -c '^kind:' "$rendered") objects valid (Kubernetes ${versions[*]})"
done
