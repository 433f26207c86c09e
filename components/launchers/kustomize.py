"""A pure-Python renderer for the subset of kustomize that ``manifests/`` uses.

The launchers render with ``kubectl kustomize`` where kubectl is installed and with this module
where it is not (the components image, a KFP launcher pod); ``tests/manifests`` checks that both
give the same objects for every overlay and for per-run renders::

    objs = build(Path("manifests/overlays/pytorchjob-cpu"))          # like `kubectl kustomize DIR`
    objs = build(Path("/tmp/run"), {"resources": ["../overlay"], "nameSuffix": "-r1"})

Supported kustomization keys (anything else is refused with a ValueError, never ignored):
``resources`` (files and directories), ``namespace``, ``namePrefix``/``nameSuffix``, ``labels``
(metadata only), ``configurations`` (``nameReference`` and ``images`` field specs),
``configMapGenerator`` (files, literals; create/replace/merge), ``generatorOptions``, ``images``,
``patches`` (JSON 6902 ops, or strategic-merge patches on custom resources, where kustomize
merges maps and replaces lists since it has no schema) and ``sortOptions`` (legacy order).
Kustomize's semantics reproduced here: transformers run in kustomize's order (generators, patches,
namespace, prefix/suffix, labels, images); the hash suffix of generated ConfigMaps is added last,
from their data; references to renamed objects are fixed at the end. Files are read as YAML 1.1
(PyYAML) where kustomize reads 1.2: quote strings such as yes/no/on/off in manifests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.launchers.patching import apply_json_patch, merge_patch
from components.launchers.transformers import (
    configmap_hash,
    fix_references,
    legacy_sort,
    set_images,
)

SUPPORTED_KEYS = {
    "apiVersion", "kind", "resources", "namespace", "namePrefix", "nameSuffix", "labels",
    "configurations", "configMapGenerator", "generatorOptions", "images", "patches", "sortOptions",
}  # fmt: skip
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "ClusterTrainingRuntime",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
}  # fmt: skip
BUILTIN_GROUPS = {"", "rbac.authorization.k8s.io", "apps", "batch", "policy", "storage.k8s.io"}


@dataclass
class _Res:
    """One object being rendered, with the names it had (references may use any of them)."""

    obj: dict[str, Any]
    names: list[str]
    needs_hash: bool = False

    @property
    def kind(self) -> str:
        return self.obj.get("kind", "")

    @property
    def group(self) -> str:
        api = self.obj.get("apiVersion", "")
        return api.rpartition("/")[0]

    def rename(self, name: str) -> None:
        self.obj["metadata"]["name"] = name
        self.names.append(name)


@dataclass
class _Config:
    """``configurations`` merged over every kustomization of the build (kustomize does the same)."""

    name_refs: list[tuple[str, str, str]] = field(default_factory=list)  # referent, referrer, path
    image_paths: list[tuple[str, str]] = field(default_factory=list)  # kind, path


def build(root: Path, kustomization: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Render the kustomization in ``root`` (or ``kustomization``, resolved against ``root``).

    Raises:
        ValueError: an unsupported key or patch, a missing file, a failed JSON-patch ``test``.
    """
    config = _Config()
    top = kustomization if kustomization is not None else _read_kustomization(root)
    resources = _render(Path(root), top, config)
    for res in resources:
        if res.needs_hash:
            res.rename(f"{res.obj['metadata']['name']}-{configmap_hash(res.obj)}")
    fix_references(resources, config)
    return [r.obj for r in legacy_sort(resources, top.get("sortOptions"))]


def load_yaml_documents(text: str, origin: str) -> list[dict[str, Any]]:
    """The non-empty documents of a YAML stream, with aliases expanded into separate copies."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ValueError(f"{origin}: not valid YAML: {e}") from None
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "metadata" not in d:
            raise ValueError(f"{origin}: every document must be a Kubernetes object with kind")
    return [_unshare(d) for d in docs]


def _unshare(value: Any) -> Any:
    # YAML aliases (&pod / *pod) load as ONE shared object: a patch of the Worker template would
    # also change the Master's. Copy without a memo so every occurrence is its own object.
    if isinstance(value, dict):
        return {k: _unshare(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshare(v) for v in value]
    return value


def _read_kustomization(root: Path) -> dict[str, Any]:
    path = root / "kustomization.yaml"
    if not path.is_file():
        raise ValueError(f"{root}: no kustomization.yaml")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a kustomization")
    return data


def _file(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if not path.exists():
        raise ValueError(f"{root}: {rel} does not exist")
    return path


def _render(root: Path, kust: dict[str, Any], config: _Config) -> list[_Res]:
    unknown = sorted(set(kust) - SUPPORTED_KEYS)
    if unknown:
        raise ValueError(
            f"{root}: kustomization keys {unknown} are not supported by the pure-Python renderer "
            "(components/launchers/kustomize.py); install kubectl, or use the supported subset"
        )
    resources: list[_Res] = []
    for rel in kust.get("resources", []):
        path = _file(root, rel)
        if path.is_dir():
            resources += _render(path, _read_kustomization(path), config)
        else:
            resources += [_Res(d, [d["metadata"]["name"]]) for d in _load(path)]
    for rel in kust.get("configurations", []):
        _read_configuration(_file(root, rel), config)
    _generate_configmaps(root, kust, resources)
    for patch in kust.get("patches", []):
        _apply_patch(root, patch, resources)
    if "namespace" in kust:
        _set_namespace(resources, kust["namespace"])
    prefix, suffix = kust.get("namePrefix", ""), kust.get("nameSuffix", "")
    if prefix or suffix:
        for res in resources:
            if res.kind not in ("CustomResourceDefinition", "Namespace"):
                res.rename(prefix + res.obj["metadata"]["name"] + suffix)
    for entry in kust.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise ValueError(f"{root}: labels with includeSelectors/includeTemplates unsupported")
        for res in resources:
            res.obj["metadata"].setdefault("labels", {}).update(entry.get("pairs", {}))
    for rule in kust.get("images", []):
        for res in resources:
            set_images(res, rule, config)
    return resources


def _load(path: Path) -> list[dict[str, Any]]:
    return load_yaml_documents(path.read_text(), str(path))


def _read_configuration(path: Path, config: _Config) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(data) - {"nameReference", "images"})
    if unknown:
        raise ValueError(f"{path}: configuration keys {unknown} are not supported")
    for ref in data.get("nameReference", []):
        for spec in ref["fieldSpecs"]:
            config.name_refs.append((ref["kind"], spec["kind"], spec["path"]))
    for spec in data.get("images", []):
        config.image_paths.append((spec["kind"], spec["path"]))


def _generate_configmaps(root: Path, kust: dict[str, Any], resources: list[_Res]) -> None:
    global_opts = kust.get("generatorOptions", {})
    for gen in kust.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for item in gen.get("files", []):
            key, sep, rel = item.partition("=")
            key, rel = (key, rel) if sep else (Path(item).name, item)
            data[key] = _file(root, rel).read_text()
        for item in gen.get("literals", []):
            key, _, value = item.partition("=")
            data[key] = value
        if set(gen) - {"name", "namespace", "behavior", "files", "literals", "options"}:
            raise ValueError(f"{root}: configMapGenerator {gen.get('name')}: unsupported keys")
        opts = {**global_opts, **gen.get("options", {})}
        behavior = gen.get("behavior", "create")
        if behavior == "create":
            meta: dict[str, Any] = {"name": gen["name"]}
            if gen.get("namespace"):
                meta["namespace"] = gen["namespace"]
            obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}
            resources.append(_Res(obj, [gen["name"]], needs_hash=True))
            target = resources[-1]
        else:
            found = [
                r for r in resources
                if r.kind == "ConfigMap" and r.names[0] == gen["name"]
                and gen.get("namespace") in (None, r.obj["metadata"].get("namespace"))
            ]  # fmt: skip
            if len(found) != 1:
                raise ValueError(f"{root}: ConfigMap {gen['name']} to {behavior} not found")
            target = found[0]
            old = target.obj.get("data") or {}
            target.obj["data"] = {**old, **data} if behavior == "merge" else data
        if opts.get("disableNameSuffixHash"):
            target.needs_hash = False
        for key in ("labels", "annotations"):
            if opts.get(key):
                target.obj["metadata"].setdefault(key, {}).update(opts[key])


def _selected(res: _Res, target: dict[str, Any]) -> bool:
    unsupported = set(target) - {"group", "version", "kind", "name", "namespace", "labelSelector"}
    if unsupported:
        raise ValueError(f"patch target keys {sorted(unsupported)} are not supported")
    version = res.obj.get("apiVersion", "").rpartition("/")[2]
    meta = res.obj["metadata"]
    for key, actual in (
        ("group", res.group), ("version", version), ("kind", res.kind),
        ("name", meta["name"]), ("namespace", meta.get("namespace", "")),
    ):  # fmt: skip
        if key in target and not re.fullmatch(target[key], actual):
            return False
    for pair in filter(None, target.get("labelSelector", "").split(",")):
        key, _, value = pair.partition("=")
        if "!" in key or meta.get("labels", {}).get(key.strip()) != value.strip():
            return False
    return True


def _apply_patch(root: Path, patch: dict[str, Any], resources: list[_Res]) -> None:
    if set(patch) - {"path", "patch", "target"}:
        raise ValueError(f"{root}: patch options {sorted(set(patch))} are not supported")
    text = _file(root, patch["path"]).read_text() if "path" in patch else patch["patch"]
    body = yaml.safe_load(text)
    target = patch.get("target")
    if isinstance(body, list):  # JSON 6902 (kustomize's rule: a list of operations)
        if target is None:
            raise ValueError(f"{root}: a JSON 6902 patch needs a target")
        for res in [r for r in resources if _selected(r, target)]:
            old_name = res.obj["metadata"]["name"]
            res.obj = apply_json_patch(res.obj, body, origin=f"{root}: {res.kind} {old_name}")
            if res.obj["metadata"]["name"] != old_name:
                res.names.append(res.obj["metadata"]["name"])
        return
    if not isinstance(body, dict) or "kind" not in body:
        raise ValueError(f"{root}: a strategic-merge patch must be a Kubernetes object")
    if target is None:
        target = {"kind": body["kind"], "name": re.escape(body["metadata"]["name"])}
    matched = [r for r in resources if _selected(r, target)]
    if not matched:
        raise ValueError(f"{root}: patch for {target} matches no resource")
    for res in matched:
        if res.group in BUILTIN_GROUPS:
            raise ValueError(
                f"{root}: strategic-merge patches of built-in kinds ({res.kind}) need "
                "Kubernetes' merge keys: use a JSON 6902 patch, or kubectl"
            )
        res.obj = merge_patch(res.obj, body)


def _set_namespace(resources: list[_Res], namespace: str) -> None:
    for res in resources:
        if res.kind not in CLUSTER_SCOPED:
            res.obj["metadata"]["namespace"] = namespace
        for subject in res.obj.get("subjects", []) if res.kind.endswith("RoleBinding") else []:
            if subject.get("kind") == "ServiceAccount" and subject.get("name") == "default":
                subject["namespace"] = namespace
