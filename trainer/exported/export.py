"""Export a training checkpoint (one rank or sharded over many) as a versioned model directory.

    result = export_checkpoint("out/train/run", "out/models")     # -> out/models/click-dlrm/v1
    result = export_checkpoint("out/train/run/checkpoints/step-00000200", "out/models",
                               name="ctr-campaign", manifest="out/episodes/interval=...")

What it does (layout in :mod:`trainer.exported.artifact`):

1. resolves the checkpoint (a run directory, its ``checkpoints`` directory or one step directory)
   and reads ``meta.json``: the resolved config, the data identity and the feature spec;
2. reads the ETL manifest the run trained on (``data.path`` of the config, or ``manifest``) and
   refuses it unless its content hash is the checkpoint's: the feature spec and the hash contract
   exported must be the ones the embedding rows were trained under;
3. loads every rank's shard (checksummed, ``weights_only``), merges the embedding rows
   (:func:`trainer.parallel.reshard.merge_shards`) and takes the dense layers of rank 0, after
   checking that every replica holds the same;
4. rebuilds the model from those tensors, exports the dense graph with ``torch.export`` (dynamic
   batch and row counts) and checks it against the rebuilt model;
5. writes everything into a temporary directory, ``CHECKSUMS`` last, and renames it to the next
   ``v<N>``. Re-exporting the same checkpoint returns the version that already holds it.

A run with dynamic tables (``parallel.dynamic``) exports its physical tables and each dynamic
feature's id -> row map (:mod:`trainer.exported.id_maps`); scoring maps ids as the trainer does.

With ``delta=True`` an export after the first writes only the embedding rows that changed since
the newest version (plus the dense parameters and the graph), naming that version as its base
(:mod:`trainer.exported.delta`); loading applies the chain and scores bit for bit as a full export
of the same checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.checkpoint import LATEST, META, CheckpointError, load_shard, read_latest, read_meta
from trainer.config import TrainerConfig
from trainer.config_loader import build, to_dict
from trainer.data.contract import ContractError, Manifest, load_manifest
from trainer.data.hashing import HASH_CONTRACT
from trainer.dynamic import exported_id_map, physical_layout
from trainer.exported import delta as deltas
from trainer.exported.artifact import (
    FEATURES_FILE,
    FORMAT,
    FORMAT_VERSION,
    GRAPH_FILE,
    LINEAGE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    ExportError,
    check_name,
    list_versions,
    publish,
    read_json,
    verify_checksums,
    write_json,
)
from trainer.exported.id_maps import IdMap, IdMaps, write_id_maps
from trainer.exported.model import DenseGraph, TableEmbeddings, layout_of
from trainer.exported.tensors import save_array, save_graph
from trainer.meta import export_refusal
from trainer.models import RecModel, build_model
from trainer.parallel.reshard import merge_shards
from trainer.parallel.sharded_embeddings import PLAN_KEY
from trainer.run_state import checkpoint_problems

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class ExportResult:
    """Where an export went and what it cost."""

    path: Path
    name: str
    version: str
    created: bool
    """False when this checkpoint had been exported already (``path`` is that version)."""
    bytes: int
    seconds: float
    base: str | None = None
    """The version this export is a delta on (None: a full export)."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A step directory from a run directory, a ``checkpoints`` directory or a step directory."""
    p = Path(path)
    for root in (p, p / "checkpoints"):
        if (root / META).is_file():
            return root
        if (root / LATEST).is_file():
            return read_latest(root)  # refuses a damaged pointer or one leading out of root
    raise FileNotFoundError(
        f"--checkpoint {str(path)!r}: no checkpoint there (expected a run's output_dir, its "
        "checkpoints directory, or a step-XXXXXXXX directory holding meta.json)"
    )


def _manifest(where: str, meta: dict[str, Any]) -> Manifest:
    """The manifest the checkpoint trained on, or a ValueError saying what differs."""
    try:
        manifest = load_manifest(where)
    except ContractError as e:
        raise ValueError(
            f"cannot read the manifest of the training data ({e}); pass --manifest <ETL output "
            "directory of the interval the run trained on>"
        ) from None
    saved = meta["data"]["content_hash"]
    if manifest.content_hash != saved:
        raise ValueError(
            f"{where} is not the data this checkpoint was trained on (content hash "
            f"{manifest.content_hash[:12]}..., the checkpoint's is {saved[:12]}...); pass "
            "--manifest <the ETL output directory of that interval>"
        )
    return manifest


def _shards(ckpt: Path, info: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Dense state (rank 0's, checked equal on every rank) and the full embedding table."""
    shards = [load_shard(ckpt, r, info) for r in range(int(info["world_size"]))]
    dense = shards[0]["model"]
    for r, shard in enumerate(shards[1:], 1):
        for key, value in dense.items():
            if not torch.equal(shard["model"][key], value):
                raise ExportError(
                    f"{ckpt}: rank {r} holds another value of the replicated dense parameter "
                    f"{key!r} than rank 0; the checkpoint is inconsistent, export another step"
                )
    tables = [s["embeddings"] for s in shards]
    full = merge_shards(tables) if PLAN_KEY in tables[0] else tables[0]
    return dense, full


def _graph(net: RecModel, layout: Any) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`DenseGraph` for any number of unique rows and of samples."""
    gen = torch.Generator().manual_seed(0)
    U, N = 5, 3
    args: tuple[torch.Tensor, ...] = (
        torch.randn(U, net.embeddings.dim, generator=gen),
        torch.randint(0, U, (N, layout.sparse_width), generator=gen),
        torch.randn(N, layout.dense_width, generator=gen),
    )
    rows, samples = torch.export.Dim("rows", min=1), torch.export.Dim("samples", min=1)
    shapes: tuple[dict[int, Any], ...] = ({0: rows}, {0: samples}, {0: samples})
    if net.embeddings.has_linear:
        args, shapes = (*args, torch.randn(U, 1, generator=gen)), (*shapes, {0: rows})
    with torch.no_grad():
        return torch.export.export(DenseGraph(net).eval(), args, dynamic_shapes=shapes)


def _code_version() -> dict[str, Any]:
    """git commit (and whether the tree had local changes) plus the package versions."""
    from importlib.metadata import PackageNotFoundError, version

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                 timeout=10, check=True)  # fmt: skip
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    try:
        metarec = version("metarec")
    except PackageNotFoundError:
        metarec = "unknown"
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "metarec": metarec,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _run_metrics(ckpt: Path, step: int) -> tuple[dict[str, Any] | None, str]:
    """The run's ``eval.json`` when it evaluated this checkpoint's step (else None, and why)."""
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    path = run_dir / METRICS_FILE if run_dir else None
    if path is None or not path.is_file():
        return None, "no eval.json beside the checkpoints"
    metrics = read_json(path)
    if metrics.get("step") != step:
        return None, f"eval.json is of step {metrics.get('step')}, the checkpoint of step {step}"
    return metrics, str(path)


def _existing(model_dir: Path, fingerprint: str) -> Path | None:
    """A complete version of this model already exported from the same checkpoint."""
    for version in reversed(list_versions(model_dir)):
        lineage = model_dir / version / LINEAGE_FILE
        try:
            if read_json(lineage)["checkpoint"]["fingerprint"] == fingerprint:
                verify_checksums(model_dir / version)
                return model_dir / version
        except (ExportError, KeyError, TypeError):
            continue  # a damaged version is never reused
    return None


def _feature_spec(m: Manifest) -> dict[str, Any]:
    """What serving needs of the manifest: the feature spec, episode sizes and hash contract."""
    if any(m.hash.get(k) != v for k, v in HASH_CONTRACT.items()):
        raise ValueError(
            f"the training data was hashed under contract {m.hash}, this metarec hashes under "
            f"{HASH_CONTRACT}; serving could not reproduce its ids: export with a matching version"
        )
    return {
        "task_key": m.task_key,
        "k_support": m.k_support,
        "q_query": m.q_query,
        "min_support": m.min_support,
        "min_query": m.min_query,
        "schema_version": m.schema_version,
        "interval": m.interval,
        "features": [asdict(f) for f in m.features],
        "dense_features": [asdict(d) for d in m.dense_features],
        "hash": m.hash,
    }


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_checkpoint(
    checkpoint: str | Path,
    models_root: str | Path,
    *,
    name: str | None = None,
    manifest: str | None = None,
    graph: bool = True,
    delta: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` under ``<models_root>/<name>/v<N>`` (see the module docstring).

    Args:
        checkpoint: a run's output directory, its ``checkpoints`` directory or a step directory.
        models_root: root of the model registry (local path).
        name: model name (default ``<label>-<arch>``, e.g. ``click-dlrm``).
        manifest: ETL output directory the run trained on (default: the config's ``data.path``).
        graph: also export the ``torch.export`` dense graph.
        delta: write only the rows changed since the newest version of the model (its base),
            unless there is none, it does not fit (another model config or feature spec) or its
            chain is :data:`~trainer.exported.delta.FULL_EVERY` long: then a full export.

    Raises:
        FileNotFoundError: no checkpoint at ``checkpoint``.
        ValueError: another run's data, an unreadable manifest, a bad name, a corrupt or
            inconsistent checkpoint (``ExportError``); the message says what to do.
    """
    t0 = time.perf_counter()
    ckpt = resolve_checkpoint(checkpoint)
    try:
        info = read_meta(ckpt)
        meta = info["meta"]
        if not all(k in meta for k in ("config", "data", "features", "dense_features")):
            raise CheckpointError(f"{ckpt} was not written by the metarec trainer")
        cfg = build(TrainerConfig, meta["config"])
        refusal = export_refusal(cfg.meta)
        if refusal:
            raise CheckpointError(refusal)
        man = _manifest(manifest or cfg.data.path, meta)
        problems = checkpoint_problems(ckpt, cfg, man)
        if problems:
            raise ValueError(f"{ckpt} does not fit its manifest: " + "; ".join(problems))
        fingerprint = hashlib.sha256((ckpt / META).read_bytes()).hexdigest()
        name = check_name(name or f"{cfg.model.label}-{cfg.model.arch}")
        model_dir = Path(models_root) / name
        found = _existing(model_dir, fingerprint)
        if found is not None:
            log.info("%s is already exported as %s: nothing to do", ckpt, found)
            return ExportResult(found, name, found.name, False, _size(found),
                                time.perf_counter() - t0)  # fmt: skip
        dense, full = _shards(ckpt, info)
    except CheckpointError as e:
        raise ExportError(f"cannot export {ckpt}: {e}") from None
    spec = _feature_spec(man)
    layout = layout_of(spec)
    dynamic = list(cfg.parallel.dynamic)
    id_maps = exported_id_map(full, dynamic)
    maps = None
    if dynamic:  # the run's dynamic tables: scoring reads the rows their id maps give
        each = {t.feature: IdMap(*id_maps[t.feature], t.capacity, t.fallback_rows) for t in dynamic}
        maps = IdMaps(layout, each)
    emb = full["emb.weight"].detach().to(torch.float32).contiguous().numpy()
    lin = full.get("linear.weight")
    lin = None if lin is None else lin.detach().to(torch.float32).contiguous().numpy()
    null_rows = physical_layout(layout, dynamic).table_offsets
    if np.any(emb[list(null_rows)]):
        raise ExportError(f"{ckpt}: a null (padding) row of the embedding table is not zero")
    tables = TableEmbeddings(emb, lin, layout, maps)
    net = build_model(cfg.model, layout, tables)
    net.load_state_dict(dense)
    net.eval()
    log.info("loaded %s: step %d, %d rank shard(s), %d rows x %d; exporting the graph ...",
             ckpt, info["step"], info["world_size"], emb.shape[0], emb.shape[1])  # fmt: skip
    program = _graph(net, layout) if graph else None
    metrics, metrics_source = _run_metrics(ckpt, int(info["step"]))
    if metrics is None:
        log.warning("%s: no metrics exported (%s); the promotion gate will need --evaluate-on",
                    ckpt, metrics_source)  # fmt: skip
    lineage = {
        "checkpoint": {
            "path": str(ckpt.resolve()),
            "step": info["step"],
            "world_size": info["world_size"],
            "placement": meta.get("placement"),
            "fingerprint": fingerprint,
        },
        "data": {**meta["data"], "splits": man.splits},
        "metrics": {"source": metrics_source, "exported": metrics is not None},
        "config": meta["config"],
        "code": _code_version(),
        "exported_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }

    arrays = {"emb": emb} if lin is None else {"emb": emb, "linear": lin}
    tables = {key: f"tables/{key}.npy" for key in arrays}
    plan = None
    if delta:
        desc = {
            "model": to_dict(cfg.model),
            "tables": tables,
            "dynamic": {t.feature: [t.capacity, t.fallback_rows] for t in dynamic},
        }
        plan = deltas.plan_delta(model_dir, arrays, desc, spec)

    def write(tmp: Path) -> None:
        index: dict[str, Any] = {}
        params = {}
        for key, value in dense.items():
            rel = f"dense/{key}.npy"
            index[rel] = {"name": key, **save_array(tmp / rel, value.detach().float().numpy())}
            params[key] = rel
        delta_entry = None
        if plan is None:
            for key, rel in tables.items():
                index[rel] = save_array(tmp / rel, arrays[key])
        else:
            delta_entry = deltas.write_delta(tmp, plan, arrays, index)
        dynamic_entry = None
        if dynamic:
            base_maps = None if plan is None else plan.id_maps
            dynamic_entry = write_id_maps(tmp, id_maps, dynamic, index, base_maps)
        if program is not None:
            save_graph(tmp / GRAPH_FILE, program)
        inputs = ["emb (rows, dim) float32", "inverse (samples, slots) int64",
                  "dense (samples, dense_width) float32"]  # fmt: skip
        if lin is not None:
            inputs.append("linear (rows, 1) float32")
        write_json(tmp / MODEL_FILE, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
            "model": to_dict(cfg.model), "adaptation": to_dict(cfg.eval_meta()),
            "tables": tables, "dense_params": params, "tensors": index,
            "graph": None if program is None else {
                "file": GRAPH_FILE, "torch": torch.__version__, "inputs": inputs,
                "output": "logits (samples, 2) float32 [ctr, cvr]; pCTR = sigmoid(ctr), pCTCVR "
                          "= sigmoid(ctr) * sigmoid(cvr)" if cfg.model.task == "esmm" else
                          "logits (samples,) float32; score = sigmoid(logit)",
                "rows": "emb/linear rows of the sorted unique global ids (table offset + local "
                        "id; with dynamic tables, the rows their id maps give); inverse indexes "
                        "them per slot"},
            "label": cfg.model.label, "delta": delta_entry, "dynamic": dynamic_entry,
        })  # fmt: skip
        write_json(tmp / FEATURES_FILE, spec)
        if metrics is not None:
            write_json(tmp / METRICS_FILE, metrics)
        write_json(tmp / LINEAGE_FILE, lineage)

    final = publish(model_dir, write)
    seconds = time.perf_counter() - t0
    size = _size(final)
    base = None if plan is None else plan.base.name
    log.info("exported %s -> %s (%.1f MB in %.1f s%s)", ckpt, final, size / 1e6, seconds,
             "" if plan is None else f", {len(plan.rows)} rows changed since {base}")  # fmt: skip
    return ExportResult(final, name, final.name, True, size, seconds, base)
