"""The model ``metarec evaluate`` scores: a training checkpoint or an exported model.

    model = load_model(path, root)    # path: an export's version directory (model.json), a run's
                                      # output_dir, its checkpoints directory or a step directory

Both become a :class:`~trainer.models.RecModel` on the CPU in evaluation mode, whose collection
has ``read(batch)``: a checkpoint's dense parameters and its full embedding table (the shards of a
sharded run merged) in the trainer's plain collection, an export's tables in
:class:`~trainer.exported.model.TableEmbeddings`. So a checkpoint and its export are scored by
the same :func:`trainer.meta.adapt` / :func:`trainer.meta.predict` from different storage, which
is what the checkpoint = export oracle compares. Loading checks the episodes' feature spec
(names, buckets, slots, dense features) against the model's and refuses a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import TrainerConfig
from trainer.config_loader import build
from trainer.data.batch import FeatureLayout
from trainer.data.contract import load_manifest
from trainer.meta import MetaConfig
from trainer.models import RecModel, build_model
from trainer.models.build import build_embeddings

NOT_A_MODEL = (
    "{path} is neither an exported model (a version directory <models>/<name>/v<N> holding "
    "model.json) nor a training checkpoint (a run's output_dir, its checkpoints directory or a "
    "step-XXXXXXXX directory holding meta.json)"
)


@dataclass
class EvaluatedModel:
    """A loaded model and what the evaluation reports about it."""

    model: RecModel
    source: str
    """``checkpoint`` or ``export``."""
    path: str
    """The step directory or the export's version directory."""
    training: MetaConfig
    """The training run's inner loop (``meta.*``): "adaptation with the training setting"."""
    info: dict[str, Any]
    """What identifies it in the JSON: name/version or step, architecture, meta mode."""


def load_model(path: str | Path, root: str) -> EvaluatedModel:
    """Load the model at ``path`` for evaluation on the episodes of ``root`` (module docstring).

    Raises:
        FileNotFoundError: ``path`` is neither an export nor a checkpoint.
        ValueError: the episodes were encoded with another feature spec, or the checkpoint or
            export is damaged, incomplete or not this trainer's.
    """
    from trainer.exported.artifact import MODEL_FILE

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(NOT_A_MODEL.format(path=p) + "; the path does not exist")
    if (p / MODEL_FILE).is_file():
        return _export(p, root)
    return _checkpoint(p, root)


def _export(path: Path, root: str) -> EvaluatedModel:
    from trainer.exported.evaluation import check_compatible
    from trainer.exported.model import load_exported

    exported = load_exported(path, graph=False)  # ExportError (a ValueError) names the damage
    check_compatible(exported, load_manifest(root), root)
    meta = exported.lineage.get("config", {}).get("meta")
    training = build(MetaConfig, meta) if meta else exported.adaptation
    cfg = exported.model.cfg
    info = {"name": exported.name, "version": exported.version, "arch": cfg.arch,
            "task": cfg.task, "label": cfg.label, "mode": training.mode}  # fmt: skip
    return EvaluatedModel(exported.model, "export", str(path), training, info)


def _checkpoint(path: Path, root: str) -> EvaluatedModel:
    from trainer.checkpoint import CheckpointError, read_meta
    from trainer.exported.export import _shards, resolve_checkpoint
    from trainer.run_state import checkpoint_problems

    try:
        ckpt = resolve_checkpoint(path)
    except FileNotFoundError:
        raise FileNotFoundError(NOT_A_MODEL.format(path=path)) from None
    manifest = load_manifest(root)
    try:
        info = read_meta(ckpt)
        meta = info.get("meta", {})
        if not all(k in meta for k in ("config", "data", "features", "dense_features")):
            raise CheckpointError(f"{ckpt} was not written by the metarec trainer")
        cfg = build(TrainerConfig, meta["config"])
        problems = checkpoint_problems(ckpt, cfg, manifest)
        if problems:
            raise ValueError(
                f"{root} was encoded with another feature spec than checkpoint {ckpt}: "
                + "; ".join(problems)
                + "; evaluate on episodes of the ETL spec the run trained on"
            )
        dense, table = _shards(ckpt, info)
    except CheckpointError as e:
        raise ValueError(f"cannot evaluate {ckpt}: {e}") from None
    layout = FeatureLayout.from_manifest(manifest)
    embeddings = build_embeddings(cfg.model, layout, device="cpu")
    embeddings.load_state_dict(table)
    net = build_model(cfg.model, layout, embeddings, device="cpu", meta=cfg.meta)
    net.load_state_dict(dense)
    net.eval()
    info_out = {"step": int(info["step"]), "arch": cfg.model.arch, "task": cfg.model.task,
                "label": cfg.model.label, "mode": cfg.meta.mode,
                "trained_on": meta["data"].get("path")}  # fmt: skip
    return EvaluatedModel(net, "checkpoint", str(ckpt), cfg.meta, info_out)
