"""Tensors of an export without pickle: ``.npy`` arrays and the ``torch.export`` graph, checked.

Why not ``torch.save``/``torch.load``: a pickle stream can run code when loaded. Every tensor of an
export is a ``.npy`` file (a JSON-like header plus raw little-endian bytes) read with
``numpy.load(allow_pickle=False)``, which refuses object arrays and pickled payloads outright.

The dense graph is a ``torch.export`` archive (``.pt2``, a zip). ``torch.export.load`` can
unpickle: payloads flagged ``use_pickle``, legacy ``.pt`` weights, custom/opaque objects, and the
sample inputs (a ``torch.save`` stream, retried with ``weights_only=False`` when the safe load
fails). So :func:`save_graph` drops the sample inputs (an empty record), and :func:`load_graph`
reads the archive's bytes ONCE, checks them against the export's checksum, accepts only the
entries a plain export writes (graph JSON, raw weight/constant bytes whose configs say
``use_pickle: false``, an EMPTY sample-inputs record) and only then hands those same bytes to
``torch.export.load``: nothing in the archive is ever unpickled, and it cannot change between
the check and the load.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.durable import fsync_write
from trainer.exported.artifact import ExportError

_SAFE_DTYPES = {"float32", "float64", "int64", "int32", "bool"}
# Entries of a plain torch.export archive (after its top folder), and nothing else.
_PT2_FIXED = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    "models/model.json",
    "data/sample_inputs/model.pt",
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
}
_PT2_PAYLOAD = re.compile(r"^data/(weights/weight_\d+|constants/tensor_\d+)$")


def save_array(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Write ``array`` as ``.npy`` (fsynced); return its index entry ``{shape, dtype}``."""
    array = np.ascontiguousarray(array)
    if array.dtype.name not in _SAFE_DTYPES:
        raise ValueError(f"{path.name}: dtype {array.dtype} cannot be exported")
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fsync_write(path, buf.getvalue())
    return {"shape": list(array.shape), "dtype": array.dtype.name}


def load_array(path: Path, entry: dict[str, Any], mmap: bool = False) -> np.ndarray:
    """Read a ``.npy`` file without pickle and check it against its ``model.json`` entry.

    ``mmap``: map the file read-only instead of reading it (large embedding tables: only the rows
    a batch needs are paged in).
    """
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:  # numpy's refusal of pickled data / object arrays
        raise ExportError(f"{path} cannot be loaded safely ({e}); refusing it, re-export") from None
    if not isinstance(array, np.ndarray) or array.dtype.name not in _SAFE_DTYPES:
        raise ExportError(f"{path} does not hold a plain numeric array; re-export the model")
    if list(array.shape) != list(entry["shape"]) or array.dtype.name != entry["dtype"]:
        raise ExportError(
            f"{path} is {array.dtype.name}{list(array.shape)}, model.json says "
            f"{entry['dtype']}{entry['shape']}; re-export the model"
        )
    return array


def save_graph(path: Path, program: torch.export.ExportedProgram) -> None:
    """Save a ``torch.export`` program and check that the archive passes :func:`check_archive`."""
    program.example_inputs = None  # saved as an empty record: nothing to unpickle when loading
    buf = io.BytesIO()
    torch.export.save(program, buf)
    data = buf.getvalue()
    check_archive(data, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fsync_write(path, data)


def _payload_configs(z: zipfile.ZipFile, prefix: str, where: Path) -> None:
    """Every weight and constant must be raw tensor bytes (``use_pickle: false``) in its folder."""
    for folder in ("weights", "constants"):
        name = f"{prefix}data/{folder}/model_{folder}_config.json"
        if name not in z.namelist():
            continue
        config = json.loads(z.read(name)).get("config", {})
        for fqn, meta in config.items():
            payload = f"data/{folder}/{meta.get('path_name', '')}"
            if meta.get("use_pickle", True) or not _PT2_PAYLOAD.match(payload):
                raise ExportError(
                    f"{where}: entry {fqn!r} of the graph archive is stored as a pickle or outside "
                    "the payload folders; refusing to load it (it could carry code)"
                )


def check_archive(data: bytes, where: Path) -> None:
    """Refuse a ``.pt2`` archive holding anything that ``torch.export.load`` would unpickle.

    Raises:
        ExportError: not a zip, an unexpected entry, a payload flagged ``use_pickle``, or
            sample inputs (a pickle stream: :func:`save_graph` never writes them).
    """
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ExportError(f"{where} is not a torch.export archive (not a zip); re-export") from None
    with z:
        names = z.namelist()
        prefixes = {n.split("/", 1)[0] for n in names}
        if len(prefixes) != 1 or any("/" not in n for n in names):
            raise ExportError(f"{where}: unexpected layout of the graph archive; re-export")
        prefix = prefixes.pop() + "/"
        for name in names:
            rel = name[len(prefix) :]
            if rel not in _PT2_FIXED and not _PT2_PAYLOAD.match(rel):
                raise ExportError(
                    f"{where}: unexpected entry {rel!r} in the graph archive; refusing to load it "
                    "(only the graph JSON and raw tensor bytes are accepted, never pickles)"
                )
        try:
            _payload_configs(z, prefix, where)
        except (json.JSONDecodeError, AttributeError) as e:
            raise ExportError(
                f"{where}: unreadable payload config in the graph archive ({e})"
            ) from None
        sample = prefix + "data/sample_inputs/model.pt"
        if sample in names and z.getinfo(sample).file_size:
            raise ExportError(
                f"{where}: the graph archive carries sample inputs, a pickle stream that "
                "torch.export.load would unpickle; refusing to load it (re-export the model)"
            )


def load_graph(path: Path, sha256: str) -> torch.nn.Module:
    """The dense graph of an export as a callable module, loaded with no pickle (module doc).

    Args:
        path: ``dense/graph.pt2``.
        sha256: its digest from ``CHECKSUMS``; the bytes read here must match it.
    """
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ExportError(f"{path} does not match its checksum (modified or corrupted); re-export")
    check_archive(data, path)
    return torch.export.load(io.BytesIO(data)).module()
