"""The distributed-vs-single-process oracle (DESIGN.md §5.1): shared by the per-rank functions and
the parent process.

Each step has a GLOBAL batch of ``W * T`` episodes drawn from one seed; rank ``r`` trains on episodes
``[r*T, (r+1)*T)`` (its own VSI over them), the reference trains one process on all of them (VSI over
the union). Steps include the cases the loop meets: partial episodes, padding episodes, and a step
where the upper half of the ranks has only padding (the end of their share of the data).
Everything is float64 so that the only differences are summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tests.trainer.meta_fixtures import batch_from_local_ids, make_layout
from trainer.data.batch import EpisodeBatch, FeatureLayout
from trainer.embeddings import PlainEmbeddingCollection
from trainer.meta import MetaConfig, outer_loss
from trainer.models import ModelConfig, RecModel, build_model
from trainer.models.build import LINEAR_ARCHS
from trainer.optim import OptimConfig, Optimizers, build_optimizers
from trainer.parallel.env import ParallelEnv
from trainer.parallel.plan import ParallelConfig

DTYPE = torch.float64
EPISODES_PER_RANK = 3
FEATURES = [("user", 41, 1), ("ad", 23, 1), ("hour", 7, 1), ("tags", 13, 3)]


def layout() -> FeatureLayout:
    return make_layout(FEATURES, dense_width=2, k_support=4, q_query=3)


@dataclass(frozen=True)
class Case:
    """One training configuration of the oracle."""

    arch: str
    mode: str
    adapt: str = "dense"
    sharding: str = "row_wise"
    table_wise: tuple[str, ...] = ()
    clip: float = 0.0

    @property
    def name(self) -> str:
        tw = f"+tw:{','.join(self.table_wise)}" if self.table_wise else ""
        return f"{self.arch}-{self.mode}-{self.adapt}-{self.sharding}{tw}-clip{self.clip}"

    def model_cfg(self) -> ModelConfig:
        return ModelConfig(
            arch=self.arch, embedding_dim=4, mlp=(8, 4), bottom_mlp=(4,), embedding_init_std=0.1
        )

    def meta_cfg(self) -> MetaConfig:
        return MetaConfig(mode=self.mode, inner_steps=1, inner_lr=0.3, adapt=self.adapt)

    def optim_cfg(self) -> OptimConfig:
        return OptimConfig(dense_lr=0.02, sparse_lr=0.2, grad_clip_norm=self.clip)

    def parallel_cfg(self) -> ParallelConfig:
        return ParallelConfig(sharding=self.sharding, table_wise=self.table_wise)


def global_batch(step: int, world_size: int, rank: int | None) -> EpisodeBatch:
    """Rank ``rank``'s batch of step ``step`` (``None``: the union of every rank's episodes)."""
    lay = layout()
    g = torch.Generator().manual_seed(1000 + step)
    T, K, Q = world_size * EPISODES_PER_RANK, lay.k_support, lay.q_query
    N, S = K + Q, lay.sparse_width
    buckets = torch.tensor(lay.feature_buckets)[lay.slot_feature]
    local = (torch.rand(T, N, S, generator=g) * (buckets - 1)).long() + 1
    local[torch.rand(T, N, S, generator=g) < 0.2] = 0
    dense = torch.randn(T, N, lay.dense_width, generator=g, dtype=DTYPE)
    click = (torch.rand(T, N, generator=g) < 0.4).to(DTYPE)
    conv = (torch.rand(T, N, generator=g) < 0.5).to(DTYPE)
    n_s = torch.randint(1, K + 1, (T,), generator=g)
    n_q = torch.randint(1, Q + 1, (T,), generator=g)
    mask = torch.ones(T, dtype=torch.bool)
    mask[-1] = False  # a padding episode
    if step % 3 == 1:  # the upper half of the ranks has run out of data
        mask[(world_size + 1) // 2 * EPISODES_PER_RANK :] = False
    sl = (
        slice(None)
        if rank is None
        else slice(rank * EPISODES_PER_RANK, (rank + 1) * EPISODES_PER_RANK)
    )
    return batch_from_local_ids(
        lay, local[sl], dense[sl], click[sl], conv[sl], n_s[sl], n_q[sl], mask[sl],
        task_ids=torch.arange(T)[sl] + 100,
    )  # fmt: skip


def train_step(
    model: RecModel, opt: Optimizers, batch: EpisodeBatch, meta: MetaConfig, env: ParallelEnv | None
) -> float:
    """One outer step exactly as the trainer loop runs it; returns this rank's loss."""
    sparse = model.embeddings.lookup(batch)
    normalizer = None if env is None else env.normalizer(batch.episode_mask.sum())
    loss, _ = outer_loss(model, sparse, batch, meta, normalizer)
    loss.backward()
    if env is not None:
        env.reduce_dense_grads(model.parameters())
    opt.step()
    return float(loss.detach())


def reference_model(case: Case) -> RecModel:
    """The single-process model with the plain collection, initialised like the sharded one."""
    lay, cfg = layout(), case.model_cfg()
    coll = PlainEmbeddingCollection(
        lay.table_offsets, lay.total_rows, cfg.embedding_dim, lay.slot_feature,
        linear=cfg.arch in LINEAR_ARCHS, init_std=cfg.embedding_init_std, seed=1, dtype=DTYPE,
    )  # fmt: skip
    return build_model(cfg, lay, embeddings=coll, seed=0)


def reference_run(case: Case, world_size: int, steps: int) -> dict:
    """The single-process run on the union batches: dense state, full table state, Adam state."""
    model = reference_model(case)
    opt = build_optimizers(case.optim_cfg(), model)
    losses = [
        train_step(model, opt, global_batch(s, world_size, None), case.meta_cfg(), None)
        for s in range(steps)
    ]
    return {
        "dense": {k: v.clone() for k, v in model.state_dict().items()},
        "emb": {k: v.clone() for k, v in model.embeddings.state_dict().items()},
        "adam": opt.state_dict()["dense"]["state"],
        "losses": losses,
    }


def assert_close_states(actual: dict, expected: dict, what: str) -> None:
    assert set(actual) == set(expected), (what, sorted(actual), sorted(expected))
    for key in expected:
        label = f"{what} {key}"
        torch.testing.assert_close(
            actual[key], expected[key], rtol=1e-9, atol=1e-11, msg=lambda m, k=label: f"{k}: {m}"
        )
