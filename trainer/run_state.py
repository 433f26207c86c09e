"""What a checkpoint holds, and how a run restores one: resume its own, or warm start from another's.

    checkpoints = RunCheckpoints(checkpointer, RunParts(model, optimizers, reader, device),
                                 RunIdentity(cfg, manifest, world_size, plan_fingerprint))
    step = checkpoints.restore()                     # resume, else warm start, else 0
    checkpoints.save(step, reader_position)          # one shard per rank, then meta.json
    checkpoint_problems(ckpt, cfg, manifest)         # [] or why ckpt cannot warm start such a
                                                     # run (resume=True: resume it)

The Trainer builds the parts and hands them over; this module never sees the Trainer.

State (one shard per rank, loaded with ``weights_only=True``)::

    {"model": dense parameters (replicated: equal on every rank),
     "embeddings": this rank's rows + row-wise Adagrad sums + null mask (one process: the table),
     "optimizers": {"dense": Adam state}, "reader": {"epoch", "step_in_epoch", "seed", "world_size"},
     "step": int, "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]}}

Metadata (``meta.json``, readable without torch): the resolved config, the data it was trained on
(manifest content hash, interval, time range, task key), the feature spec (names, kinds, buckets,
slots; dense feature names) and the embedding placement (world size, sharding-plan fingerprint:
None for a single table), so a mismatch is explained before any tensor is loaded.

- **Resume** (``checkpoint.resume``, the run's own ``checkpoints/latest``): everything is restored
  and the reader continues the same sample stream, so an interrupted run ends exactly where an
  uninterrupted one does. Refused when the data, the batching or the model shape changed, and when
  the world size or the sharding plan changed, unless ``checkpoint.reshard`` (see below).
- **Reshard** (resume with ``checkpoint.reshard = true``, and every warm start whose placement
  differs): each rank reads every saved shard, merges the table (``trainer.parallel.reshard``) and
  keeps its rows under this run's plan; dense layers, Adam state and RNG come from rank 0 (they are
  replicated). A resumed reader keeps the fraction of the epoch done (the stream of the rest of
  that epoch is this world size's).
- **Warm start** (``checkpoint.warm_start``): model and embeddings (and, with
  ``warm_start_optimizer``, Adam and Adagrad state) from another run, at any world size; step 0 and
  a fresh reader on this run's data (the next interval). Refused when the feature spec or the model
  shape differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.checkpoint import (
    LATEST,
    META,
    Checkpointer,
    CheckpointError,
    load_shard,
    read_latest,
    read_meta,
)
from trainer.parallel.reshard import merge_shards
from trainer.parallel.sharded_embeddings import PLAN_KEY

if TYPE_CHECKING:
    from trainer.config import TrainerConfig
    from trainer.data.contract import Manifest
    from trainer.data.reader import EpisodeReader
    from trainer.models import RecModel
    from trainer.optim import Optimizers

log = logging.getLogger(__name__)
MODEL_SHAPE_KEYS = ("arch", "embedding_dim", "mlp", "bottom_mlp")
"""``model`` settings that fix parameter shapes: a checkpoint only loads where they are equal."""
STREAM_KEYS = ("train_split", "batch_episodes", "seed", "shuffle", "shuffle_buffer")
"""``data`` settings that define the sample stream: a resume continues it only where they are equal."""
METHOD_PARAMETERS = ("inner_lrs.", "task_encoder.", "id_generator.")
"""The model's parameters a meta-learning method adds (:class:`trainer.models.RecModel`): a warm
start from a checkpoint without them (plain or MAML pretraining) keeps their initial values."""
FEATURE_KEYS = ("name", "kind", "buckets", "slots")
"""What ``meta.json`` records of each sparse feature (what the stacked table's shape depends on)."""


@dataclass(frozen=True)
class RunParts:
    """The live objects whose state a checkpoint holds (tensors: one shard per rank)."""

    model: RecModel
    """The dense layers, and ``model.embeddings``: this rank's embedding rows and Adagrad sums."""
    optimizers: Optimizers
    reader: EpisodeReader
    device: torch.device
    """Where the run computes (on a GPU its RNG state is saved as well)."""


@dataclass(frozen=True)
class RunIdentity:
    """What a checkpoint is of (``meta.json``): checked before any tensor is loaded."""

    cfg: TrainerConfig
    manifest: Manifest
    """The data the run trains on."""
    world_size: int
    plan: str | None
    """Fingerprint of the sharding plan that places the embedding rows (None: one full table on
    every rank)."""


class RunCheckpoints:
    """A run's checkpoints: :meth:`restore` at start-up (resume or warm start), :meth:`save`."""

    def __init__(self, checkpointer: Checkpointer, parts: RunParts, identity: RunIdentity) -> None:
        self.checkpointer, self.parts, self.identity = checkpointer, parts, identity

    def save(self, step: int, reader_position: dict[str, int]) -> Path:
        """Checkpoint ``step`` (``reader_position``: where the next step's batch comes from)."""
        state = _state_dict(self.parts, step, reader_position)
        return self.checkpointer.save(step, state, meta=_checkpoint_meta(self.identity))

    def restore(self) -> int:
        """Resume the run's latest checkpoint, else warm start when configured; returns the step.

        Raises:
            ValueError: the checkpoint does not fit this run (the message says what differs).
            CheckpointError: it is incomplete, corrupt or not this trainer's.
        """
        cfg = self.identity.cfg.checkpoint
        latest = self.checkpointer.latest()
        if latest is not None:
            if not cfg.resume:
                raise ValueError(
                    f"{self.checkpointer.root} already holds checkpoints of a run; set "
                    "checkpoint.resume=true to continue it, or choose another train.output_dir"
                )
            return self._resume(latest)
        if cfg.warm_start:
            self._warm_start(find_checkpoint(cfg.warm_start))
        return 0

    def _resume(self, ckpt: Path) -> int:
        parts, run = self.parts, self.identity
        problems = checkpoint_problems(ckpt, run.cfg, run.manifest, resume=True)
        if problems:
            raise ValueError(
                f"cannot resume {ckpt}: " + "; ".join(problems) + ". Resuming continues the same "
                "sample stream with the same model: restore those settings, use "
                "checkpoint.warm_start for new data, or choose another train.output_dir"
            )
        info = read_meta(ckpt)
        moved = _placement_problem(run, info)
        if moved and not run.cfg.checkpoint.reshard:
            world = info["world_size"]
            raise ValueError(
                f"cannot resume {ckpt}: {moved}. Resume with the same world size and [parallel] "
                f"settings (torchrun --nproc_per_node / metarec train --nproc {world} for one "
                "host), or set checkpoint.reshard=true to re-place the saved embedding rows over "
                "this run's ranks (the rest of the current epoch then follows this world size's "
                "sample stream)"
            )
        state = self._load(ckpt, info, resharded=moved is not None)
        parts.model.load_state_dict(state["model"])
        parts.model.embeddings.load_state_dict(state["embeddings"])
        parts.optimizers.load_state_dict(state["optimizers"])
        reader_state = state["reader"]
        if moved:
            reader_state = _rescaled_position(reader_state, parts.reader)
        parts.reader.load_state_dict(reader_state)
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and parts.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        log.info(
            "resumed %s at step %d (reader at %s)%s",
            ckpt, state["step"], reader_state, f", resharded: {moved}" if moved else "",
        )  # fmt: skip
        return int(state["step"])

    def _warm_start(self, ckpt: Path) -> None:
        parts, run = self.parts, self.identity
        problems = checkpoint_problems(ckpt, run.cfg, run.manifest)
        if problems:
            raise ValueError(
                f"cannot warm start from {ckpt}: " + "; ".join(problems) + ". A warm start "
                "reuses the embedding tables and dense layers, so the feature spec (names, "
                "buckets, slots) and the model shape must be the same; train from scratch instead"
            )
        info = read_meta(ckpt)
        moved = _placement_problem(run, info)
        state = self._load(ckpt, info, resharded=moved is not None)
        own = parts.model.state_dict()
        # Plain pretraining, then a method: the method's own parameters (Meta-SGD's step sizes,
        # FiLM's encoder, MetaEmb's generator) keep their initial values when the checkpoint has
        # none; every other key is loaded strictly.
        new = [k for k in own if k.startswith(METHOD_PARAMETERS) and k not in state["model"]]
        extra = sorted({k.split(".")[0] for k in state["model"] if k not in own})
        if extra:
            raise ValueError(
                f"cannot warm start from {ckpt}: it holds parameters this run's model has not "
                f"({', '.join(extra)}); set meta.mode / meta.learn_inner_lr as the run that wrote "
                "it did, or warm start from a checkpoint without them"
            )
        parts.model.load_state_dict({**state["model"], **{k: own[k] for k in new}})
        embeddings = state["embeddings"]
        if new:  # the optimizer state has no entry for them: fresh, as warm_start_optimizer=false
            log.info("warm start: the %s of meta.mode %s start from their initial values (%d "
                     "tensors), with a fresh optimizer state", ", ".join(sorted({k.split(".")[0]
                     for k in new})), run.cfg.meta.mode, len(new))  # fmt: skip
        if run.cfg.checkpoint.warm_start_optimizer and not new:
            parts.optimizers.load_state_dict(state["optimizers"])
        else:  # fresh (zero) Adagrad sums, only the rows
            embeddings = {
                k: torch.zeros_like(v) if k.endswith(".adagrad_sum") else v
                for k, v in embeddings.items()
            }
        parts.model.embeddings.load_state_dict(embeddings)
        log.info(
            "warm start from %s (step %d, interval %s) onto interval %s%s%s",
            ckpt, state["step"], info["meta"]["data"]["interval"], run.manifest.interval,
            "" if run.cfg.checkpoint.warm_start_optimizer else " (fresh optimizer state)",
            f", resharded: {moved}" if moved else "",
        )  # fmt: skip

    def _load(self, ckpt: Path, info: dict[str, Any], resharded: bool) -> dict[str, Any]:
        """This rank's state of ``ckpt``: its own shard, or (``resharded``) rank 0's state with the
        FULL embedding table merged from every shard, which either collection takes its rows
        from."""
        if not resharded:
            return self.checkpointer.load(ckpt)[0]
        shards = [load_shard(ckpt, r, info) for r in range(int(info["world_size"]))]
        state = shards[0]  # dense layers, Adam and RNG state are replicated: rank 0's
        tables = [s["embeddings"] for s in shards]
        if PLAN_KEY in tables[0]:
            state["embeddings"] = merge_shards(tables)
        return state


def checkpoint_problems(
    ckpt: str | Path, cfg: TrainerConfig, manifest: Manifest, *, resume: bool = False
) -> list[str]:
    """Why the checkpoint ``ckpt`` (a step directory) cannot warm start a run of ``cfg`` on
    ``manifest``'s data: each setting of the model shape and of the feature spec that differs;
    with ``resume``, why it cannot resume that run: also other data or another sample stream
    (``STREAM_KEYS``). Empty: it can. The trainer refuses with these words; the training step
    cold-starts with them.

    Raises:
        CheckpointError: ``ckpt`` is not a complete checkpoint of this trainer.
    """
    ckpt = Path(ckpt)
    saved = _require(read_meta(ckpt), ckpt)
    current = _spec_meta(cfg, manifest)
    problems = _compatibility_problems(saved, current)
    if not resume:
        return problems
    if saved["data"]["content_hash"] != manifest.content_hash:
        problems.append(
            f"the data differs: the checkpoint trained on {saved['data']['path']} (interval "
            f"{saved['data']['interval']}), data.path {cfg.data.path} has other content"
        )
    for key in STREAM_KEYS:
        a, b = saved["config"]["data"][key], current["config"]["data"][key]
        if a != b:
            problems.append(f"data.{key} is {a!r} in the checkpoint, {b!r} in this run")
    return problems


def _state_dict(parts: RunParts, step: int, reader_position: dict[str, int]) -> dict[str, Any]:
    """The checkpoint state of a run at ``step`` (see the module docstring)."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if parts.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "model": parts.model.state_dict(),
        "embeddings": parts.model.embeddings.state_dict(),
        "optimizers": parts.optimizers.state_dict(),
        "reader": reader_position,
        "step": step,
        "rng": rng,
    }


def _checkpoint_meta(run: RunIdentity) -> dict[str, Any]:
    """``meta.json`` content: config, data identity, feature spec and embedding placement."""
    m = run.manifest
    return {
        **_spec_meta(run.cfg, m),
        "data": {
            "path": run.cfg.data.path,
            "content_hash": m.content_hash,
            "interval": m.interval,
            "time_range": m.time_range,
            "task_key": m.task_key,
            "schema_version": m.schema_version,
        },
        "placement": {"world_size": run.world_size, "plan": run.plan},
    }


def _spec_meta(cfg: TrainerConfig, manifest: Manifest) -> dict[str, Any]:
    """The part of ``meta.json`` that fixes the parameters' shapes: the config, the sparse
    features (in the stacked table's order) and the dense feature names."""
    return {
        "config": cfg.to_dict(),
        "features": [{k: getattr(f, k) for k in FEATURE_KEYS} for f in manifest.features],
        "dense_features": [d.name for d in sorted(manifest.dense_features, key=lambda d: d.index)],
    }


def _as_list(v: Any) -> Any:
    return list(v) if isinstance(v, list | tuple) else v


def _compatibility_problems(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why a checkpoint with metadata ``saved`` cannot load into a run with metadata ``current``
    (model shape and feature spec; empty when it can)."""
    problems = []
    for key in MODEL_SHAPE_KEYS:
        a, b = _as_list(saved["config"]["model"][key]), _as_list(current["config"]["model"][key])
        if a != b:
            problems.append(f"model.{key} is {a!r} in the checkpoint, {b!r} in this run")
    old = {f["name"]: f for f in saved["features"]}
    new = {f["name"]: f for f in current["features"]}
    for name in old.keys() - new.keys():
        problems.append(f"feature {name!r} is in the checkpoint but not in this data")
    for name in new.keys() - old.keys():
        problems.append(f"feature {name!r} is in this data but not in the checkpoint")
    for name in old.keys() & new.keys():
        for key in ("kind", "buckets", "slots"):
            if old[name][key] != new[name][key]:
                problems.append(
                    f"feature {name!r} has {key}={old[name][key]} in the checkpoint, "
                    f"{new[name][key]} in this data"
                )
    if not problems and [f["name"] for f in saved["features"]] != list(new):
        problems.append("the sparse features are in another order (the stacked table differs)")
    if saved["dense_features"] != current["dense_features"]:
        problems.append(
            f"dense features {saved['dense_features']} in the checkpoint, "
            f"{current['dense_features']} in this data"
        )
    return sorted(problems)


def _require(info: dict[str, Any], ckpt: Path) -> dict[str, Any]:
    meta = info.get("meta", {})
    if not all(k in meta for k in ("config", "data", "features", "dense_features")):
        raise CheckpointError(f"{ckpt} was not written by this trainer (its meta.json lacks them)")
    return meta


def _placement_problem(run: RunIdentity, info: dict[str, Any]) -> str | None:
    """Why this run's ranks cannot each load their own shard of ``info``'s checkpoint (or None)."""
    world = int(info["world_size"])
    plan = info.get("meta", {}).get("placement", {}).get("plan")  # older: a full table per rank
    if (world, plan) == (run.world_size, run.plan):
        return None
    if world != run.world_size:
        return f"it was saved by {world} rank(s), this run has {run.world_size}"
    return (
        f"its embedding rows are placed by sharding plan {plan or '(one table)'}, this run's plan "
        f"is {run.plan or '(one table)'} (parallel.sharding, parallel.table_wise or parallel.des "
        "changed)"
    )


def _rescaled_position(saved: dict[str, int], reader: EpisodeReader) -> dict[str, int]:
    """The reader position of another world size at the same fraction of the epoch (the
    episodes behind us: ``step_in_epoch x batch x world size``)."""
    done = int(saved["step_in_epoch"]) * int(saved["world_size"])
    step = min(done // reader.world_size, max(reader.steps_per_epoch - 1, 0))
    return {**saved, "step_in_epoch": step, "world_size": reader.world_size}


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint directory, a ``checkpoints`` root or a run's
    output directory (the latter two: their ``latest``).

    Raises:
        FileNotFoundError: nothing checkpoint-like at ``path``.
    """
    p = Path(path)
    for root in (p, p / "checkpoints"):
        if (root / META).is_file():
            return root
        if (root / LATEST).is_file():
            return read_latest(root)
    raise FileNotFoundError(
        f"checkpoint.warm_start={str(path)!r}: no checkpoint there (expected a step-XXXXXXXX "
        "directory with meta.json, a checkpoints directory with 'latest', or a run's output_dir)"
    )
