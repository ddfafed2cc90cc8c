#!/usr/bin/env python3
"""Renders a kustomization the way `kubectl kustomize DIR` does, for the subset of kustomize
that deploy/kubernetes uses, so CI needs no kustomize binary (Debian ships none; its
kubernetes-client 1.20 embeds kustomize 2.0.3, which predates `resources:` directories,
`labels:` and `patches:`).

Supported kustomization fields, and nothing else (anything else is an error, never ignored):
  resources   files, or directories holding a kustomization.yaml (rendered recursively)
  namespace   set on every namespaced object
  labels      `pairs` added to every object's metadata.labels (no selectors, no templates)
  patches     `path:` strategic-merge patches; the target is the patch's kind and name
Strategic merge: maps merge key by key, a null value deletes the key, lists of containers,
initContainers, volumes, env and volumeMounts merge by their Kubernetes merge key (name,
mountPath), any other list is replaced. `$patch`
directives are refused. Merged items may come out in another order than kustomize's; check.sh
compares with that order normalised.

check.sh compares this renderer's output with `kubectl kustomize` wherever kubectl is
installed, so the two cannot silently disagree.

Usage: render.py DIR  -> the objects as a YAML stream on stdout
"""

import sys
from pathlib import Path

import yaml

KNOWN_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath"}


class RenderError(Exception):
    pass


def load_documents(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def object_key(obj):
    meta = obj.get("metadata") or {}
    return (obj.get("kind"), meta.get("name"))


def merge(base, patch, where):
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return patch
    out = dict(base)
    for key, value in patch.items():
        if key.startswith("$"):
            raise RenderError(f"{where}: directive {key} is not supported by render.py")
        if value is None:
            out.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = merge_list(out[key], value, MERGE_KEYS[key], f"{where}.{key}")
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def merge_list(base, patch, merge_key, where):
    out = list(base)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise RenderError(f"{where}: every item needs `{merge_key}`")
        for i, existing in enumerate(out):
            if existing.get(merge_key) == item[merge_key]:
                out[i] = merge(existing, item, f"{where}[{item[merge_key]}]")
                break
        else:
            out.append(item)
    return out


def render(directory):
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    (k,) = load_documents(kfile)
    unknown = set(k) - KNOWN_FIELDS
    if unknown:
        raise RenderError(f"{kfile}: fields render.py does not implement: {sorted(unknown)}")

    objects = []
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend(load_documents(path))
        else:
            raise RenderError(f"{kfile}: resource {entry} does not exist")
    seen = set()
    for obj in objects:
        key = object_key(obj)
        if key in seen:
            raise RenderError(f"{kfile}: {key[0]} {key[1]} appears twice")
        seen.add(key)

    for i, entry in enumerate(k.get("patches", [])):
        if set(entry) != {"path"}:
            raise RenderError(f"{kfile}: patches[{i}]: only `path:` is supported")
        for patch in load_documents(directory / entry["path"]):
            key = object_key(patch)
            matches = [n for n, obj in enumerate(objects) if object_key(obj) == key]
            if not matches:
                raise RenderError(f"{directory / entry['path']}: no {key[0]} {key[1]} to patch")
            n = matches[0]
            objects[n] = merge(objects[n], patch, f"{entry['path']}:{key[0]}/{key[1]}")

    for i, entry in enumerate(k.get("labels", [])):
        if set(entry) - {"pairs", "includeSelectors", "includeTemplates"} or entry.get(
            "includeSelectors"
        ) or entry.get("includeTemplates"):
            raise RenderError(f"{kfile}: labels[{i}]: only `pairs` is supported")
        for obj in objects:
            labels = obj.setdefault("metadata", {}).setdefault("labels", {})
            labels.update(entry["pairs"])

    namespace = k.get("namespace")
    if namespace:
        for obj in objects:
            if obj.get("kind") not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = namespace
    return objects


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        objects = render(argv[1])
    except (RenderError, OSError, yaml.YAMLError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=True, default_flow_style=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
