"""A tampered, incomplete or unsafe export is refused with a message naming the file, and loading
never unpickles: planted pickle payloads (even with the checksums rewritten to match) are refused
before anything runs, and an audit hook sees no unpickling while a model loads and scores."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from trainer.exported import ExportError, export_checkpoint, load_exported
from trainer.exported.artifact import write_checksums

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pristine(single_run, tmp_path_factory) -> Path:
    return export_checkpoint(single_run, tmp_path_factory.mktemp("integrity") / "models").path


@pytest.fixture
def export(pristine, tmp_path) -> Path:
    copy = tmp_path / "v1"
    shutil.copytree(pristine, copy)
    return copy


class Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _resign(path: Path) -> None:
    """What an attacker with write access would do: make CHECKSUMS match the planted files."""
    (path / "CHECKSUMS").unlink()
    write_checksums(path)


def test_flipped_byte_missing_extra_and_incomplete(export):
    load_exported(export)  # intact
    emb = export / "tables" / "emb.npy"
    data = bytearray(emb.read_bytes())
    data[len(data) // 2] ^= 0x01
    emb.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"tables/emb\.npy does not match its checksum"):
        load_exported(export)
    data[len(data) // 2] ^= 0x01
    emb.write_bytes(bytes(data))
    load_exported(export)

    param = next((export / "dense").glob("*.npy"))
    moved = param.read_bytes()
    param.unlink()
    with pytest.raises(
        ExportError, match=rf"dense/{param.name} is listed in CHECKSUMS but missing"
    ):
        load_exported(export)
    param.write_bytes(moved)

    (export / "dense" / "extra.pt").write_bytes(b"x")
    with pytest.raises(ExportError, match=r"dense/extra\.pt is not listed in CHECKSUMS"):
        load_exported(export)
    (export / "dense" / "extra.pt").unlink()

    os.symlink(export / "model.json", export / "link.json")
    with pytest.raises(ExportError, match=r"link\.json is a symbolic link"):
        load_exported(export)
    (export / "link.json").unlink()

    (export / "CHECKSUMS").unlink()
    with pytest.raises(ExportError, match="incomplete export: it has no CHECKSUMS"):
        load_exported(export)


def test_cli_names_the_tampered_file(export, tmp_path, capsys):
    from components.cli import main

    (export / "lineage.json").write_text("{}")
    (tmp_path / "events").mkdir()
    code = main(["score", "--model", str(export), "--input", str(tmp_path / "events"), "--out",
                 str(tmp_path / "p.parquet")])  # fmt: skip
    assert code == 2
    assert "lineage.json does not match its checksum" in capsys.readouterr().err


def test_planted_pickle_in_an_array_is_refused(export, tmp_path):
    marker = tmp_path / "pwned"
    (export / "tables" / "emb.npy").write_bytes(pickle.dumps(Payload(marker)))
    _resign(export)
    with pytest.raises(ExportError, match=r"emb\.npy cannot be loaded safely"):
        load_exported(export)
    # an object array: numpy would unpickle its elements with allow_pickle=True
    np.save(
        export / "tables" / "emb.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True
    )
    _resign(export)
    with pytest.raises(ExportError, match="cannot be loaded safely"):
        load_exported(export)
    assert not marker.exists()


def _rewrite_graph(export: Path, change) -> None:
    graph = export / "dense" / "graph.pt2"
    src = zipfile.ZipFile(io.BytesIO(graph.read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        entries = {i.filename: src.read(i.filename) for i in src.infolist()}
        for name, data in change(entries).items():
            dst.writestr(name, data)
    graph.write_bytes(out.getvalue())
    _resign(export)


def _sample_inputs(marker: Path):
    def change(entries: dict[str, bytes]) -> dict[str, bytes]:
        name = next(n for n in entries if n.endswith("data/sample_inputs/model.pt"))
        return {**entries, name: pickle.dumps(Payload(marker))}

    return change


def _pickled_weight(marker: Path):
    def change(entries: dict[str, bytes]) -> dict[str, bytes]:
        config = next(n for n in entries if n.endswith("model_weights_config.json"))
        d = json.loads(entries[config])
        fqn = next(iter(d["config"]))
        d["config"][fqn]["use_pickle"] = True
        weight = config.rsplit("/", 1)[0] + "/" + d["config"][fqn]["path_name"]
        return {**entries, config: json.dumps(d).encode(), weight: pickle.dumps(Payload(marker))}

    return change


def _extra_entry(marker: Path):
    def change(entries: dict[str, bytes]) -> dict[str, bytes]:
        prefix = next(iter(entries)).split("/", 1)[0]
        return {**entries, f"{prefix}/data/constants/custom_obj_0": pickle.dumps(Payload(marker))}

    return change


@pytest.mark.parametrize("plant", [_sample_inputs, _pickled_weight, _extra_entry])
def test_planted_pickle_in_the_graph_is_refused(plant, export, tmp_path):
    marker = tmp_path / "pwned"
    _rewrite_graph(export, plant(marker))
    with pytest.raises(ExportError, match="graph archive"):
        load_exported(export)
    assert not marker.exists()


AUDIT = """
import sys
events = []
sys.addaudithook(lambda ev, args: events.append(args[:2]) if ev == "pickle.find_class" else None)
from trainer.data.reader import EpisodeReader
from trainer.exported import load_exported
model = load_exported(sys.argv[1])
with EpisodeReader(sys.argv[2], "valid", 8, shuffle=False, epochs=1, prefetch=0) as reader:
    batch = next(iter(reader))
model.episode_logits(batch, adapt=False); model.episode_logits(batch, adapt=True)
if len(sys.argv) > 3:  # control: a full unpickler is seen by the hook
    import torch; torch.load(sys.argv[3], weights_only=False)
print(len(events))
"""


@pytest.mark.multiprocess  # a fresh interpreter per audit, so nothing was imported before
def test_loading_and_scoring_never_unpickle(export, episodes, single_run):
    def unpickled(*extra: str) -> int:
        proc = subprocess.run([sys.executable, "-c", AUDIT, str(export), str(episodes), *extra],
                              capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return int(proc.stdout.split()[-1])

    assert unpickled() == 0
    shard = next((single_run / "checkpoints").glob("step-*/rank-00000.pt"))
    assert unpickled(str(shard)) > 0  # the hook does see unpickling
