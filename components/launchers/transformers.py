"""The transformers of :mod:`components.launchers.kustomize` that follow kustomize's rules to the
letter: the ConfigMap content hash, image rewriting, name-reference fixing and the legacy order.

    configmap_hash({"data": {"trainer.toml": "a = 1\\n"}})     # "d28dt5bbdg", as kubectl prints
    split_image("reg.io/a/b:1.0@sha256:...")                  # ("reg.io/a/b", ":1.0", "@sha256:...")
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.launchers.kustomize import _Config, _Res

LEGACY_FIRST = [
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
    "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap",
    "Secret", "Endpoints", "Service", "LimitRange", "PriorityClass", "PersistentVolume",
    "PersistentVolumeClaim", "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget",
]  # fmt: skip
LEGACY_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
# Built-in references kustomize always fixes: (referent kind, referrer kind, path).
BUILTIN_REFS = [
    ("Role", "RoleBinding", "roleRef/name"),
    ("ServiceAccount", "RoleBinding", "subjects"),
]


def configmap_hash(obj: dict[str, Any]) -> str:
    """kustomize's content hash of a ConfigMap: sha256 of Go's JSON of ``{data, kind, name: ""}``,
    10 hex digits with 0, 1, 3, a, e mapped to g, h, k, m, t."""
    doc: dict[str, Any] = {"data": obj.get("data") or {}, "kind": "ConfigMap", "name": ""}
    if obj.get("binaryData"):
        doc["binaryData"] = obj["binaryData"]
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):  # Go escapes HTML
        text = text.replace(raw, esc)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return hashlib.sha256(text.encode()).hexdigest()[:10].translate(str.maketrans("013ae", "ghkmt"))


def split_image(image: str) -> tuple[str, str, str]:
    """``name[:tag][@digest]`` -> (name, ":tag" or "", "@digest" or "")."""
    name, at, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon:]
    return name, tag, at + digest


def image_rule(placeholder: str, image: str) -> dict[str, Any]:
    """The kustomize ``images`` entry replacing ``placeholder`` with ``image``
    (``name[:tag][@digest]``; a digest wins over a tag)."""
    name, tag, digest = split_image(image)
    rule: dict[str, Any] = {"name": placeholder, "newName": name}
    if digest:
        rule["digest"] = digest[1:]
    elif tag:
        rule["newTag"] = tag[1:]
    return rule


def _new_image(image: str, rule: dict[str, Any]) -> str:
    name, tag, digest = split_image(image)
    if name != rule["name"]:
        return image
    name = rule.get("newName", name)
    if rule.get("digest"):
        return f"{name}@{rule['digest']}"
    if "newTag" in rule:
        return f"{name}:{rule['newTag']}"
    return name + tag + digest


def set_images(res: _Res, rule: dict[str, Any], config: _Config) -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for c in value:
                        if isinstance(c, dict) and isinstance(c.get("image"), str):
                            c["image"] = _new_image(c["image"], rule)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(res.obj)  # kustomize's legacy image filter: any containers/initContainers list
    for kind, path in config.image_paths:
        if kind == res.kind:
            for parent, key in locate(res.obj, path.split("/")):
                if isinstance(parent[key], str):
                    parent[key] = _new_image(parent[key], rule)


def locate(node: Any, parts: list[str]) -> list[tuple[Any, str]]:
    """(parent, key) of every field at ``parts``, descending into lists implicitly."""
    if isinstance(node, list):
        return [hit for item in node for hit in locate(item, parts)]
    if not isinstance(node, dict) or parts[0] not in node:
        return []
    if len(parts) == 1:
        return [(node, parts[0])]
    return locate(node[parts[0]], parts[1:])


def fix_references(resources: list[_Res], config: _Config) -> None:
    for referent_kind, referrer_kind, path in BUILTIN_REFS + config.name_refs:
        referents = [r for r in resources if r.kind == referent_kind]
        for res in (r for r in resources if r.kind == referrer_kind):
            namespace = res.obj["metadata"].get("namespace")
            for parent, key in locate(res.obj, path.split("/")):
                if key == "subjects":
                    for subject in parent[key]:
                        _fix_subject(subject, referents)
                    continue
                for ref in referents:
                    same_ns = ref.obj["metadata"].get("namespace") in (None, namespace)
                    if parent[key] in ref.names and same_ns:
                        parent[key] = ref.obj["metadata"]["name"]
                        break


def _fix_subject(subject: dict[str, Any], accounts: list[_Res]) -> None:
    if subject.get("kind") != "ServiceAccount":
        return
    for sa in accounts:
        if subject.get("name") in sa.names:
            subject["name"] = sa.obj["metadata"]["name"]
            if sa.obj["metadata"].get("namespace"):
                subject["namespace"] = sa.obj["metadata"]["namespace"]
            return


def legacy_sort(resources: list[_Res], options: dict[str, Any] | None) -> list[_Res]:
    options = options or {}
    if options.get("order", "legacy") != "legacy":
        raise ValueError(f"sortOptions order {options['order']!r} is not supported (legacy only)")
    legacy = options.get("legacySortOptions", {})
    first = legacy.get("orderFirst", LEGACY_FIRST)
    last = legacy.get("orderLast", LEGACY_LAST)

    def key(res: _Res) -> tuple[int, int, str, str]:
        kind = res.kind
        tier, index = (0, first.index(kind)) if kind in first else (1, 0)
        if kind in last:
            tier, index = 2, last.index(kind)
        version = res.obj.get("apiVersion", "").rpartition("/")[2]
        gvk = f"{res.group or '~G'}_{version or '~V'}_{kind or '~K'}"
        meta = res.obj["metadata"]
        return tier, index, gvk, f"{meta.get('namespace') or '~X'}|{meta['name']}"

    return sorted(resources, key=key)
