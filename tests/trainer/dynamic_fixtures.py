"""Models over dynamic tables for the tests (the parity layout and batches, float64)."""

from __future__ import annotations

from collections.abc import Sequence

from tests.trainer.parallel.parity import DTYPE, Case, layout
from trainer.dynamic import DynamicEmbeddingCollection, DynamicTableConfig, physical_layout
from trainer.embeddings import PlainEmbeddingCollection
from trainer.models import RecModel, build_model
from trainer.models.build import LINEAR_ARCHS
from trainer.parallel.apply import build_sharded_embeddings
from trainer.parallel.env import ParallelEnv
from trainer.parallel.plan import ParallelConfig, build_sharding_plan

SEED = 1


def dynamic_model(
    case: Case,
    tables: Sequence[DynamicTableConfig],
    env: ParallelEnv | None = None,
    parallel: ParallelConfig | None = None,
    id_shards: int = 1,
) -> RecModel:
    """The model of ``case`` whose ``tables`` are dynamic: over the plain collection (``env``
    None; its maps split into ``id_shards``) or the sharded one of ``env`` (MixCache/DES per
    ``parallel``)."""
    lay, cfg = layout(), case.model_cfg()
    phys = physical_layout(lay, tables)
    if env is None:
        inner = PlainEmbeddingCollection(
            phys.table_offsets, phys.total_rows, cfg.embedding_dim, phys.slot_feature,
            linear=cfg.arch in LINEAR_ARCHS, init_std=cfg.embedding_init_std, seed=SEED,
            dtype=DTYPE,
        )  # fmt: skip
        comm = None
    else:
        plan = build_sharding_plan(phys, env.world_size, cfg, parallel, DTYPE)
        inner = build_sharded_embeddings(cfg, plan, env, phys, seed=SEED, dtype=DTYPE)
        comm = env.comm
    coll = DynamicEmbeddingCollection(
        inner, lay, tables, init_std=cfg.embedding_init_std, seed=SEED, comm=comm,
        id_shards=id_shards,
    )  # fmt: skip
    return build_model(cfg, lay, embeddings=coll, seed=0)
