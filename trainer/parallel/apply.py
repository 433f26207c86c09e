"""Apply hybrid parallelism to a model: the ONE place that decides what is sharded and what is
replicated.

    env = init_parallel(device=cfg.train.device, backend=cfg.parallel.backend,
                        timeout_s=cfg.parallel.timeout_s,
                        dense_bucket_bytes=int(cfg.parallel.dense_bucket_mb * 2**20))
    model, plan = build_parallel_model(cfg.model, layout, env, cfg.parallel, seed=cfg.train.seed)
    optimizers = build_optimizers(cfg.optim, model)        # unchanged: Adam + the shard's Adagrad

- embeddings: model-parallel, a :class:`ShardedEmbeddingCollection` placed by the plan (row-wise by
  default), injected into the unchanged model (``build_model(..., embeddings=...)``);
- dense half: data-parallel, a full replica per rank, made identical by a broadcast from rank 0
  here and kept identical by the summed gradients (``env.reduce_dense_grads``) and the same Adam;
- ``cfg.cache.enabled``: each shard lives in host memory behind a device cache (MixCache,
  ``trainer/cache.py``), per-table settings from the plan;
- ``cfg.des != "off"``: the collection substitutes operators with DES
  (:class:`~trainer.parallel.des.DESExchange`: the owners compute the LR / FM / first-layer partial
  sums), told here which parameter is the first layer's field weight; the step is unchanged.

Seeds follow ``build_model``: dense layers from ``seed``, embedding rows from ``seed + 1``, so a
sharded model starts exactly where the single-process one does, at any world size.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from trainer.dynamic import DynamicEmbeddingCollection, physical_layout
from trainer.models.build import ModelConfig, RecModel, build_embeddings, build_model
from trainer.parallel import des_plan
from trainer.parallel.dense_sync import broadcast_parameters
from trainer.parallel.des import DESExchange
from trainer.parallel.env import ParallelEnv
from trainer.parallel.plan import ParallelConfig, ShardingPlan, build_sharding_plan
from trainer.parallel.sharded_embeddings import ShardedEmbeddingCollection

log = logging.getLogger(__name__)


def build_sharded_embeddings(
    model: ModelConfig,
    plan: ShardingPlan,
    env: ParallelEnv,
    layout: Any,
    *,
    seed: int = 1,
    dtype: torch.dtype = torch.float32,
) -> ShardedEmbeddingCollection:
    """This rank's shard of the model's tables under ``plan`` (seeded like the plain collection)."""
    if plan.dim != model.embedding_dim:
        raise ValueError(
            f"the sharding plan has dim {plan.dim}, model.embedding_dim is {model.embedding_dim}"
        )
    return ShardedEmbeddingCollection(
        plan,
        env.comm,
        layout.slot_feature,
        init_std=model.embedding_init_std,
        seed=seed,
        device=env.device,
        dtype=dtype,
        cache=plan.cache_spec(env.rank),
    )


def build_parallel_model(
    model: ModelConfig,
    layout: Any,
    env: ParallelEnv,
    cfg: ParallelConfig | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    meta: Any | None = None,
) -> tuple[RecModel, ShardingPlan]:
    """The model of ``model`` over ``layout`` with sharded embeddings and replicated dense layers.

    ``meta`` (the ``MetaConfig``) tells DES what the inner loop adapts (None: plain training).
    Returns the model (on ``env.device``) and the plan (rank 0 logs it as a table).

    Raises:
        ValueError: the plan cannot be built (unknown table-wise feature), does not fit the model,
            or ``des = "on"`` cannot apply to this model and adapt setting.
    """
    plan = build_sharding_plan(layout, env.world_size, model, cfg, dtype)
    if env.is_main:
        log.info("embedding placement:\n%s", plan)
    embeddings = build_sharded_embeddings(model, plan, env, layout, seed=seed + 1, dtype=dtype)
    net = build_model(model, layout, embeddings=embeddings, seed=seed, meta=meta)
    broadcast_parameters(net, env.comm)
    if plan.des != "off":
        embeddings.use_des(build_des(net, embeddings, plan.des, meta))
    return net, plan


def build_des(
    net: RecModel,
    coll: ShardedEmbeddingCollection,
    mode: str | tuple[str, ...],
    meta: Any | None,
) -> DESExchange:
    """DES over ``coll`` for ``net`` under ``mode`` (``on``, ``auto`` or a tuple of operators) and
    the training's ``meta`` (what its inner loop adapts; None: plain training).

    Raises:
        ValueError: ``mode`` asks for an operator that cannot apply (``des_plan.check_on``).
    """
    first = net.first_field_layers() if des_plan.APPLICABLE.get(net.cfg.arch) else []
    shapes = [(name, int(layer.weight.shape[1])) for name, layer in first]
    spec = des_plan.describe_model(net.cfg.arch, coll.plan, coll.pooling.slots_per_field(), shapes)
    adapted = net.adapted_layers(meta.adapt) if meta is not None else []
    allowed = des_plan.admissible(spec, meta, adapted)
    return DESExchange(coll, spec, mode, allowed, tuple(layer.weight for _, layer in first))


def build_dynamic_model(
    model: Any,
    layout: Any,
    env: Any,
    parallel: Any,
    *,
    sharded: bool,
    seed: int,
    device: torch.device | str | None,
    meta: Any | None = None,
) -> tuple[Any, Any]:
    """The run's model (``model``: ``ModelConfig``) over ``layout`` with ``parallel.dynamic``'s
    tables dynamic: the rows in the plain collection, or (``sharded``) in this rank's shard with
    its MixCache and DES as ``trainer.parallel.apply`` builds them, and the id maps sharded by id
    (this rank keeps the map of its ids, whose rows it owns: ``trainer.dynamic``; a dynamic table
    must be row-wise). Seeds as ``build_model``: dense layers ``seed``, rows ``seed + 1``. Returns
    the model and the physical layout's plan."""
    phys = physical_layout(layout, parallel.dynamic)
    plan = build_sharding_plan(phys, env.world_size if sharded else 1, model, parallel)
    if sharded:
        inner = build_sharded_embeddings(model, plan, env, phys, seed=seed + 1)
    else:
        inner = build_embeddings(model, phys, seed=seed + 1, device=device)
    coll = DynamicEmbeddingCollection(
        inner, layout, parallel.dynamic, init_std=model.embedding_init_std, seed=seed + 1,
        comm=env.comm if sharded else None,
    )  # fmt: skip
    net = build_model(model, layout, coll, seed=seed, device=device, meta=meta)
    if sharded:
        broadcast_parameters(net, env.comm)
        if plan.des != "off":
            inner.use_des(build_des(net, inner, plan.des, meta))
    return net, plan
