"""The one config tree of the trainer: :class:`TrainerConfig` and its sections.

A run is a TOML file (``trainer/configs/debug.toml``, ``default.toml``) plus dotted overrides for the
few values that pipelines inject (paths, steps, run id)::

    cfg = load_trainer_config("debug", ["data.path=out/episodes/dt=2026-11-01", "train.steps=50"])

Sections: ``data``, ``model``, ``meta``, ``optim``, ``parallel``, ``train``, ``checkpoint``,
``eval``. ``model``, ``meta``, ``optim`` and ``parallel`` are the dataclasses of the modules that
use them (``trainer.models``, ``trainer.meta``, ``trainer.optim``, ``trainer.parallel.plan``); the
others live here. Every field has a docstring below it,
every section validates itself in ``__post_init__`` and raises ``ValueError`` with the dotted key
and the offending value; an unknown key or a wrong type is refused by
:func:`trainer.config_loader.load_config` before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trainer.config_loader import load_config, to_dict
from trainer.data.contract import ALL_SPLITS
from trainer.meta import ADAPTS, MetaConfig
from trainer.models import ModelConfig
from trainer.optim import OptimConfig
from trainer.parallel.plan import ParallelConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SECTIONS = ("data", "model", "meta", "optim", "parallel", "train", "checkpoint", "eval")


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """Where the episodes come from and how they are batched."""

    path: str = ""
    """ETL output directory of one data interval (holds ``_manifest.json``); local path or a
    ``pyarrow.fs`` URI (``s3://``, ``gs://``, ``hdfs://``). Required."""
    train_split: Literal["train", "valid", "test_cold"] = "train"
    """Split streamed for training."""
    batch_episodes: int = 64
    """Episodes per step and PER RANK (T): a step of W ranks trains on W * T episodes. Evaluation
    uses the same batch size."""
    prefetch: int = 2
    """Batches prepared ahead by the reader's background thread (0: read inline)."""
    seed: int = 0
    """Seed of the per-epoch shuffle of row groups and episodes (the same on every rank)."""
    shuffle: bool = True
    """Shuffle the training stream per epoch (evaluation never shuffles)."""
    shuffle_buffer: int = 0
    """Episodes are shuffled within blocks of at least this many (0: within each row group)."""
    task_local_rows: Literal["auto", "on", "off"] = "auto"
    """Let the reader build the per-episode row index that ``meta.adapt = "dense+emb"`` needs
    (``auto``: exactly then). With ``off`` the meta step computes it itself, more slowly."""
    verify_checksums: bool = False
    """Compare every episode file's sha256 with the manifest before training (reads all bytes)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError(
                "data.path is required: the ETL output directory of the interval to train on "
                "(set it in the config file or pass data.path=<dir>)"
            )
        if self.batch_episodes < 1:
            raise ValueError(f"data.batch_episodes must be >= 1, got {self.batch_episodes}")
        if self.prefetch < 0 or self.shuffle_buffer < 0:
            raise ValueError(
                f"data.prefetch and data.shuffle_buffer must be >= 0, "
                f"got {self.prefetch} and {self.shuffle_buffer}"
            )


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """The outer loop: length, cadences, reproducibility, device and where outputs go."""

    steps: int = 1000
    """Outer (meta) steps to run in total; a resumed run continues up to this number."""
    log_every: int = 10
    """Log progress (loss, steps/s, samples/s, ETA) and append a record to ``metrics.jsonl``
    every this many steps."""
    eval_every: int = 0
    """Evaluate the ``eval.splits`` every this many steps (0: only once, after the last step)."""
    seed: int = 0
    """Seed of the model initialisation (dense layers: ``seed``, embedding rows: ``seed + 1``)."""
    deterministic: bool = False
    """Bitwise reproducible runs: ``torch.use_deterministic_algorithms`` (slower on CUDA)."""
    threads: int = 0
    """Intra-op CPU threads (0: torch's default, one per core)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: CUDA (this process's local GPU) when available, else CPU."""
    output_dir: str = "out/train"
    """Run directory: ``config.json``, ``metrics.jsonl``, ``eval.json``, ``report.png`` and
    ``checkpoints/``."""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"train.steps must be >= 0, got {self.steps}")
        if self.log_every < 1:
            raise ValueError(f"train.log_every must be >= 1, got {self.log_every}")
        if self.eval_every < 0 or self.threads < 0:
            raise ValueError(
                f"train.eval_every and train.threads must be >= 0, "
                f"got {self.eval_every} and {self.threads}"
            )
        if not self.output_dir:
            raise ValueError("train.output_dir must not be empty")


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    """When to save, how many to keep, and what to start from."""

    every: int = 0
    """Save every this many steps (0: only after the last step); the last step is always saved."""
    keep: int = 3
    """Complete checkpoints kept under ``<output_dir>/checkpoints`` (older ones are deleted)."""
    resume: bool = True
    """Continue from ``<output_dir>/checkpoints/latest`` when it exists (same sample stream), so a
    restarted pod picks up where it stopped. With ``false`` a run directory that already holds
    checkpoints is refused rather than overwritten."""
    warm_start: str = ""
    """Start from another run's weights: its checkpoint directory (``.../step-00000100``), its
    ``checkpoints`` directory or its output directory (the latest checkpoint). Fresh reader, step 0:
    incremental training on the next interval. Ignored when this run resumes its own checkpoint.
    In the delivery flow (``components/steps``) the flow always sets it, to the champion's
    checkpoint or to empty (its ``warm_start = false``, or no champion that fits): a value in
    this file never applies there."""
    warm_start_optimizer: bool = True
    """With ``warm_start``, also load the optimizer state (Adam moments and row-wise Adagrad
    accumulators); ``false`` restarts both optimizers from zero."""
    reshard: bool = False
    """Allow resuming a checkpoint saved at another world size or sharding plan: every rank reads
    all the saved shards and keeps its rows under this run's plan (dense layers, Adam and the
    Adagrad state unchanged). The epoch in progress continues at the same fraction, with this
    world size's sample stream. Warm starts always reshard; a resume without this is refused,
    because it would not continue the same sample stream."""

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"checkpoint.every must be >= 0, got {self.every}")
        if self.keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {self.keep}")


@dataclass(kw_only=True, slots=True)
class EvalConfig:
    """Evaluation: query-set metrics without and after adaptation on each episode's support set."""

    splits: tuple[str, ...] = ("valid", "test_cold")
    """Splits to evaluate (``test_cold``: tasks never seen in training, the cold-start case)."""
    max_episodes: int = 0
    """Evaluate the first this many episodes of each split in file order (0: all of them): the
    same episodes at every world size."""
    adapt_steps: int = 0
    """SGD steps on each support set before predicting the query set (0: ``meta.inner_steps``)."""
    adapt_lr: float = 0.0
    """Step size of those steps (0: ``meta.inner_lr``)."""
    adapt: Literal["", "head", "dense", "dense+emb"] = ""
    """What adapts at evaluation ("": ``meta.adapt``). Also the fine-tuning of a plain model."""

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)
        unknown = [s for s in self.splits if s not in ALL_SPLITS]
        if unknown or len(set(self.splits)) != len(self.splits):
            raise ValueError(
                f"eval.splits must be distinct splits among {', '.join(ALL_SPLITS)}, "
                f"got {list(self.splits)}"
            )
        if self.max_episodes < 0 or self.adapt_steps < 0 or self.adapt_lr < 0:
            raise ValueError(
                "eval.max_episodes, eval.adapt_steps and eval.adapt_lr must be >= 0, got "
                f"{self.max_episodes}, {self.adapt_steps}, {self.adapt_lr}"
            )
        if self.adapt and self.adapt not in ADAPTS:
            raise ValueError(f"eval.adapt must be '' or one of {ADAPTS}, got {self.adapt!r}")


@dataclass(kw_only=True, slots=True)
class TrainerConfig:
    """The root of the config tree (one section per component; see the module docstring)."""

    data: DataConfig = field(default_factory=DataConfig)
    """The episodes to train on. ``data.path`` is required: without a ``[data]`` section the
    default factory raises the "data.path is required" error, which is the message a user needs."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture and sizes (``trainer.models.ModelConfig``)."""
    meta: MetaConfig = field(default_factory=MetaConfig)
    """MAML / FOMAML / plain and the inner loop (``trainer.meta.MetaConfig``)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Dense Adam and sparse row-wise Adagrad (``trainer.optim.OptimConfig``)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Hybrid parallelism (``trainer.parallel.plan.ParallelConfig``): embedding sharding (row-wise
    or table-wise), backend, collective timeout, dense all-reduce buckets, MixCache and DES. The
    world size comes from the launcher (``torchrun --nproc_per_node``, ``metarec train --nproc``)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The outer loop."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Saving, resuming and warm starting."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation splits and adaptation."""

    def __post_init__(self) -> None:
        if self.model.task == "esmm" and self.meta.mode == "film":
            raise ValueError(
                "model.task = 'esmm' with meta.mode = 'film': FiLM's support-set encoder reads "
                "one label per support sample, and what ESMM's two (click, and a conversion that "
                "is rare and unknown for some advertisers) should give it is an open modelling "
                "question; use meta.mode 'maml', 'fomaml', 'plain' or 'metaemb', or "
                "model.task = 'ctr'"
            )

    def eval_meta(self) -> MetaConfig:
        """The inner-loop settings of evaluation: ``eval.*`` where set, else ``meta.*``. Meta-SGD's
        learned step sizes apply unless ``eval.adapt_lr`` or another ``eval.adapt`` is set (they
        exist only for the trained scope; a set step size means plain fine-tuning)."""
        adapt = self.eval.adapt or self.meta.adapt
        learned = self.meta.learn_inner_lr
        if self.eval.adapt_lr or adapt != self.meta.adapt:
            learned = "off"
        return dataclasses.replace(
            self.meta,
            inner_steps=self.eval.adapt_steps or self.meta.inner_steps,
            inner_lr=self.eval.adapt_lr or self.meta.inner_lr,
            adapt=adapt,
            learn_inner_lr=learned,
        )

    def wants_task_local_rows(self) -> bool:
        """Whether the training reader builds per-episode rows (``data.task_local_rows``)."""
        if self.data.task_local_rows == "auto":
            return self.meta.adapt == "dense+emb"
        return self.data.task_local_rows == "on"

    def to_dict(self) -> dict:
        """The resolved config as plain data (``config.json``, checkpoint metadata)."""
        return to_dict(self)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path, or the name of a packaged run (``debug`` -> ``trainer/configs/debug.toml``).

    Raises:
        FileNotFoundError: neither a file nor a packaged run of that name exists.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / f"{path.name.removesuffix('.toml')}.toml"
    if path.parent == Path(".") and packaged.is_file():
        return packaged
    runs = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
    raise FileNotFoundError(
        f"config {str(name_or_path)!r} not found: give a TOML file or one of the packaged runs ({runs})"
    )


def load_trainer_config(
    name_or_path: str | Path | None, overrides: list[str] | None = None
) -> TrainerConfig:
    """Load a :class:`TrainerConfig` from a TOML file (or packaged run name) plus overrides.

    Args:
        name_or_path: a TOML file, a packaged run name (``debug``, ``default``) or None (all
            defaults; then ``data.path`` must come from ``overrides``).
        overrides: ``section.key=value`` strings, values parsed as TOML literals.

    Raises:
        ValueError: unknown key, wrong type, invalid value (the message names the dotted key).
        FileNotFoundError: the config file does not exist.
    """
    path = None if name_or_path is None else resolve_config_path(name_or_path)
    return load_config(TrainerConfig, path, overrides)
