"""The built-in kustomize subset and its patch primitives, on small kustomizations written here
(where kubectl is installed, each build is also compared with `kubectl kustomize`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from components.launchers.kustomize import build
from components.launchers.patching import apply_json_patch, merge_patch
from components.launchers.render import kubectl_kustomize
from components.launchers.transformers import configmap_hash

JOB = """\
apiVersion: example.com/v1
kind: Job
metadata:
  name: job
spec:
  a: &pod
    image: app:1.0
    containers: [{name: c, image: app:1.0, args: [x, w]}]
    volumes: [{name: cfg, configMap: {name: cfg}}]
  b: *pod
"""


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _check_against_kubectl(root: Path, objs: list[dict]) -> None:
    if shutil.which("kubectl"):
        assert kubectl_kustomize(root) == objs


def test_generator_hash_suffix_patches_and_references(tmp_path: Path):
    _write(tmp_path / "base", {
        "job.yaml": JOB,
        "cfg.txt": "a = 1  # <&> ünïcode\n",
        "config.yaml": "nameReference:\n- kind: ConfigMap\n  version: v1\n  fieldSpecs:\n"
                       "  - {kind: Job, path: spec/a/volumes/configMap/name}\n",
        "kustomization.yaml": "resources: [job.yaml]\nconfigurations: [config.yaml]\n"
                              "configMapGenerator:\n- name: cfg\n  files: [cfg.txt]\n",
    })  # fmt: skip
    overlay = _write(tmp_path / "overlay", {
        "ops.yaml": "- {op: test, path: /spec/b/containers/0/args/1, value: w}\n"
                    "- {op: add, path: /spec/b/containers/0/args/-, value: z}\n"
                    "- {op: remove, path: /spec/a/image}\n",
        "kustomization.yaml": "resources: [../base]\nnamespace: ns\nnameSuffix: -r1\n"
                              "images: [{name: app, newName: reg.io/app, newTag: '2.0'}]\n"
                              "labels: [{pairs: {team: ml}}]\n"
                              "patches:\n- {path: ops.yaml, target: {kind: Job}}\n"
                              "- patch: '{apiVersion: example.com/v1, kind: Job, metadata: "
                              "{name: job}, spec: {b: {volumes: null}, c: 1}}'\n",
    })  # fmt: skip
    objs = build(overlay)
    _check_against_kubectl(overlay, objs)
    cm, job = objs  # ConfigMap first (legacy order)
    assert cm["metadata"]["name"] == f"cfg-r1-{configmap_hash(cm)}"
    assert job["metadata"] == {"name": "job-r1", "namespace": "ns", "labels": {"team": "ml"}}
    a, b = job["spec"]["a"], job["spec"]["b"]
    assert a["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    assert "image" not in a and b["image"] == "app:1.0"  # the alias was copied, not shared
    assert a["containers"][0]["image"] == "reg.io/app:2.0"
    assert b["containers"][0]["args"] == ["x", "w", "z"] and a["containers"][0]["args"] == [
        "x",
        "w",
    ]
    assert "volumes" not in b and job["spec"]["c"] == 1


def test_configmap_hash_is_kustomizes():
    # value printed by `kubectl kustomize` (kustomize v5.5) for data {trainer.toml: "a = 1\n"}
    assert configmap_hash({"data": {"trainer.toml": "a = 1\n"}}) == "d28dt5bbdg"


def test_unsupported_features_are_refused(tmp_path: Path):
    _write(tmp_path, {"job.yaml": JOB,
                      "kustomization.yaml": "resources: [job.yaml]\nreplacements: []\n"})  # fmt: skip
    with pytest.raises(ValueError, match=r"\['replacements'\] are not supported"):
        build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [job.yaml]\npatches:\n- patch: '[{op: test, path: /spec/a/image, value: x}]'\n"
        "  target: {kind: Job}\n"
    )
    with pytest.raises(ValueError, match="test failed at /spec/a/image"):
        build(tmp_path)


def test_merge_patch_semantics():
    doc = {"m": {"a": 1, "b": {"c": 2}}, "l": [{"name": "x", "v": 1}], "k": 0}
    out = merge_patch(doc, {"m": {"b": {"d": 3}, "a": None}, "l": [{"name": "y"}]})
    assert out == {"m": {"b": {"c": 2, "d": 3}}, "l": [{"name": "y"}], "k": 0}
    assert doc["m"]["a"] == 1  # input untouched
    with pytest.raises(ValueError, match=r"\$patch"):
        merge_patch(doc, {"l": [{"$patch": "delete"}], "$patch": "replace"})


def test_json_patch_operations():
    doc = {"a/b": {"~c": [1, 2]}, "x": {"y": 1}}
    ops = [
        {"op": "add", "path": "/a~1b/~0c/0", "value": 0},
        {"op": "add", "path": "/a~1b/~0c/-", "value": 3},
        {"op": "copy", "from": "/x", "path": "/z"},
        {"op": "move", "from": "/x/y", "path": "/x/w"},
        {"op": "replace", "path": "/z/y", "value": 5},
        {"op": "test", "path": "/a~1b/~0c", "value": [0, 1, 2, 3]},
    ]
    assert apply_json_patch(doc, ops) == {"a/b": {"~c": [0, 1, 2, 3]}, "x": {"w": 1}, "z": {"y": 5}}
    for bad, message in [
        ({"op": "replace", "path": "/nope", "value": 1}, "does not exist"),
        ({"op": "add", "path": "/x/y/z", "value": 1}, "below a scalar"),
        ({"op": "remove", "path": "/a~1b/~0c/9"}, "past the end"),
        ({"op": "add", "path": "/a~1b/~0c/01", "value": 1}, "not a list index"),
        ({"op": "frobnicate", "path": "/x"}, "unknown JSON patch op"),
    ]:
        with pytest.raises(ValueError, match=message):
            apply_json_patch(doc, [bad])


def test_legacy_order(tmp_path: Path):
    docs = [
        {"apiVersion": "b.io/v1", "kind": "Alpha", "metadata": {"name": "z"}},
        {"apiVersion": "a.io/v1", "kind": "Zeta", "metadata": {"name": "a"}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "p"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "s"}},
        {"apiVersion": "a.io/v1", "kind": "Zeta", "metadata": {"name": "0", "namespace": "n"}},
    ]
    _write(
        tmp_path,
        {"r.yaml": yaml.safe_dump_all(docs), "kustomization.yaml": "resources: [r.yaml]\n"},
    )
    objs = build(tmp_path)
    _check_against_kubectl(tmp_path, objs)
    assert [o["metadata"]["name"] for o in objs] == ["s", "p", "0", "a", "z"]
