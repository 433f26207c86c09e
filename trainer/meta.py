"""Meta learning on episode batches: MAML, FOMAML and plain training, batched over episodes.

One outer step (what the trainer loop calls)::

    sparse = model.embeddings.lookup(batch)              # ONE lookup for support and query (VSI)
    loss, stats = outer_loss(model, sparse, batch, meta_cfg)
    loss.backward()                                      # dense meta-grads on model.parameters(),
    optimizers.step()                                    # + the rows' gradients (collection)

Inside :func:`outer_loss` (``T`` episodes of ``K`` support + ``Q`` query samples):

1. ``sparse`` (the collection's :class:`~trainer.sparse.SparseOut`, pooled for all ``T x (K+Q)``
   samples at once) is split into support and query sides;
2. the inner loop runs for all episodes together: ``vmap`` over episodes of a function that takes
   ``inner_steps`` SGD steps (``torch.func.grad``) on the masked mean support loss, through
   ``functional_call`` of the dense half. What adapts (``MetaConfig.adapt``): ``head`` = the last
   ``ModelConfig.head_layers`` layers, ``dense`` = every dense parameter, ``dense+emb`` = those plus
   task-local copies of the rows the episode uses (``batch.task_rows``), held as zero-initialised
   offsets pooled by the collection's pooling and added to the pooled fields (pooling is linear,
   so the shared rows are pooled once); null rows never adapt;
3. the query loss at the adapted parameters: masked mean per episode, summed over valid episodes
   and divided by ``normalizer``.

No parameter is copied per episode: each adapted layer gets a low-rank offset through forward
hooks (:mod:`trainer.lowrank`: the formulas, and why it is exact). This is what keeps the meta step
close to the plain step (``bench/meta_step.py``).

``maml`` keeps the inner graph (second order: ``backward`` differentiates through the inner
gradients); ``fomaml`` runs the inner loop on detached inputs, so the meta-gradient is the query
gradient at the adapted parameters (``theta' = theta - lr * stopgrad(g)``); ``plain`` does no
adaptation and takes the loss over support and query samples of each episode (same episode
weighting, so plain and meta losses are comparable).

Loss scaling: the loss is ``sum over valid episodes of the per-episode mean / normalizer``. The
default ``normalizer`` is the number of valid episodes in this batch (a mean over episodes). A
data-parallel trainer passes the GLOBAL number of valid episodes of the step, so that the sum over
ranks of the per-rank losses (and gradients: AllReduce-sum) equals the single-process loss over the
union of the ranks' episodes.

This module never imports ``torch.distributed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from trainer.lowrank import Factors, LowRankAdaptation
from trainer.models.build import RecModel
from trainer.sparse import SparseOut

MODES = ("maml", "fomaml", "plain")
ADAPTS = ("head", "dense", "dense+emb")


@dataclass
class MetaConfig:
    """How the outer step learns. Validated on construction."""

    mode: Literal["maml", "fomaml", "plain"] = "maml"
    """``maml`` (second order), ``fomaml`` (first order) or ``plain`` (no inner loop)."""
    inner_steps: int = 1
    """SGD steps on each episode's support set (also used by evaluation-time adaptation)."""
    inner_lr: float = 0.1
    """Step size of the inner SGD."""
    adapt: Literal["head", "dense", "dense+emb"] = "dense"
    """What the inner loop adapts: ``head`` (last layers), ``dense`` (all dense parameters) or
    ``dense+emb`` (plus task-local copies of the episode's embedding rows)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"meta.mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.adapt not in ADAPTS:
            raise ValueError(f"meta.adapt {self.adapt!r} is not one of {', '.join(ADAPTS)}")
        if self.inner_steps < 1:
            raise ValueError(
                f"meta.inner_steps must be >= 1, got {self.inner_steps} (use mode='plain' for no adaptation)"
            )
        if not self.inner_lr > 0:
            raise ValueError(f"meta.inner_lr must be > 0, got {self.inner_lr}")


@dataclass
class StepStats:
    """Detached 0-d tensors (no device sync until read): means over this batch's valid episodes."""

    loss: Tensor
    """The returned loss (as scaled by ``normalizer``)."""
    support_loss: Tensor
    """Support loss before adaptation."""
    query_loss: Tensor
    """Query loss after adaptation (``plain``: without adaptation)."""
    episodes: Tensor
    """Valid episodes in this batch."""


@dataclass
class Adapted:
    """Per-episode adaptation from :func:`adapt`, as offsets from the shared parameters:
    ``dense`` maps the adapted layers to their low-rank factors ``A`` ``(T, R, in)`` and ``B``
    ``(T, R, out)`` (:mod:`trainer.lowrank`); ``rows`` maps ``emb``/``linear`` to ``(T, M, width)``
    offsets of the task-local rows (``dense+emb`` only)."""

    dense: Factors
    rows: dict[str, Tensor]


# ---------------------------------------------------------------------------------------------
# Batch preparation (outside vmap: slicing, masks, labels)


def _labels(model: RecModel, batch: Any, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    if model.cfg.label == "click":
        return batch.click.to(dtype), None
    conv = batch.conversion
    return conv.clamp_min(0).to(dtype), conv >= 0


def _masks(batch: Any, known: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Float sample masks ``(T, K)`` and ``(T, Q)``: real samples of valid episodes with a label."""
    K = batch.k_support
    valid = batch.episode_mask[:, None]
    s, q = batch.support_mask & valid, batch.query_mask & valid
    if known is not None:
        s, q = s & known[:, :K], q & known[:, K:]
    return s.to(dtype), q.to(dtype)


def _task_rows(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``task_rows``, ``task_rows_mask``, ``task_inverse`` (computed when the reader did not)."""
    if batch.task_rows is not None:
        return batch.task_rows, batch.task_rows_mask, batch.task_inverse
    from trainer.data.vsi import task_local_rows

    dev = batch.inverse.device
    tr, mask, tinv = task_local_rows(batch.inverse.cpu().numpy(), int(batch.ids.numel()))
    return (
        torch.from_numpy(tr).to(dev),
        torch.from_numpy(mask).to(dev),
        torch.from_numpy(tinv).to(dev),
    )


def _masked_mean(losses: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``losses`` over the last axis where ``mask``; 0 where nothing is masked in."""
    return (losses * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def _bce(logits: Tensor, y: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, y, reduction="none")


class _Episodes:
    """Everything the per-episode functions need, split into support and query sides (dicts of
    tensors with the episode axis first, so ``vmap`` maps them with ``in_dims=0``)."""

    def __init__(
        self,
        model: RecModel,
        sparse: SparseOut,
        batch: Any,
        adapt: str | None,
        detach_support: bool = False,
    ) -> None:
        dtype = _dtype(sparse)
        K = batch.k_support
        self.y, known = _labels(model, batch, dtype)
        self.s_mask, self.q_mask = _masks(batch, known, dtype)
        self.valid = batch.episode_mask.to(dtype)
        self.rows_d0: dict[str, Tensor] = {}
        if adapt is None:
            return
        tinv = None
        if adapt == "dense+emb":
            task_rows, task_rows_mask, tinv = _task_rows(batch)
            T, M = task_rows.shape
            emb = model.embeddings
            self.rows_d0["emb"] = torch.zeros(T, M, emb.dim, dtype=dtype, device=self.y.device)
            if emb.has_linear:
                self.rows_d0["linear"] = self.rows_d0["emb"].new_zeros(T, M, 1)
            trainable = ~emb.is_null(batch.ids)
            self.row_mask = (task_rows_mask & trainable[task_rows]).to(dtype)
        # Each side pooled from the rows on its own (SparseOut.side); FOMAML's support side from
        # detached rows (no graph).
        support = (sparse.detach() if detach_support else sparse).side(slice(0, K))
        self.support = self._side(batch, support, slice(0, K), self.s_mask, tinv)
        self.query = self._side(
            batch, sparse.side(slice(K, None)), slice(K, None), self.q_mask, tinv
        )

    def _side(
        self, batch: Any, sparse: SparseOut, sl: slice, mask: Tensor, tinv: Tensor | None
    ) -> dict[str, Any]:
        side: dict[str, Any] = {
            "sparse": sparse.as_dict(),
            "dense": batch.dense[:, sl].to(self.y.dtype),
            "y": self.y[:, sl],
            "m": mask,
        }
        if tinv is not None:
            side["tinv"] = tinv[:, sl]
            side["row_mask"] = self.row_mask
        return side


def _dtype(sparse: SparseOut) -> torch.dtype:
    return next(iter(sparse.as_dict().values())).dtype


# ---------------------------------------------------------------------------------------------
# Per-episode functions (run under vmap)
#
# Adapted parameters are never copied per episode: a dense layer's adaptation is a low-rank offset
# applied by the hooks of ``trainer.lowrank`` around the forward; the task-local embedding rows are
# offsets pooled and added to the pooled fields (pooling is linear).


def _episode_logits(model: RecModel, params: dict, rows_d: dict, side: dict) -> Tensor:
    """Logits of one episode's samples at ``params`` with task-local row offsets ``rows_d``."""
    sparse = SparseOut.from_dict(side["sparse"])
    if "emb" in rows_d:  # task-local copies of the rows: rows + offset, pooled linearly
        pooling = model.embeddings.pooling
        lin = rows_d.get("linear")
        sparse = sparse.with_row_offsets(
            pooling.fields(rows_d["emb"], side["tinv"]),
            None if lin is None else pooling.lr(lin, side["tinv"]),
        )
    return functional_call(model.dense_half, params, (sparse, side["dense"]))


def _episode_loss(model: RecModel, params: dict, rows_d: dict, side: dict) -> Tensor:
    logits = _episode_logits(model, params, rows_d, side)
    return _masked_mean(_bce(logits, side["y"]), side["m"])


def _detach(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: tuple(x.detach() for x in v)
        if isinstance(v, tuple)
        else _detach(v)
        if isinstance(v, dict)
        else v.detach()
        for k, v in d.items()
    }


def _inner_loop(
    model: RecModel,
    cfg: MetaConfig,
    params: dict[str, Tensor],
    adaptation: LowRankAdaptation,
    rows_d: dict[str, Tensor],
    support: dict[str, Any],
    first_order: bool,
) -> tuple[Factors, dict, Tensor]:
    """``inner_steps`` SGD steps on one episode's support loss.

    Returns the low-rank factors per adapted layer, the row offsets and the support loss before
    adaptation.
    """
    lr = cfg.inner_lr
    if first_order:  # no outer graph through the inner gradients
        params, support = _detach(params), _detach(support)
    n = support["y"].shape[-1]
    layers = adaptation.layers

    # The gradient of -lr * loss is the SGD step itself, so B needs no extra scaling pass.
    def neg_lr_loss(var: dict, params: dict, factors: Factors, support: dict):
        # Layers with a bias get the output gradient as the gradient of a per-sample copy of the
        # bias (an expanded view: no extra pass over the outputs, unlike adding a zero offset).
        p = {**params, **{f"{layer}.bias": b for layer, b in var["b"].items()}}
        with adaptation.active(factors, var["z"]) as inputs:
            loss = _episode_loss(model, p, var["rows_d"], support)
        return loss * -lr, {layer: inputs[layer] for layer in layers}

    step_fn = grad_and_value(neg_lr_loss, has_aux=True)
    factors: Factors = {}
    loss0 = None
    for _ in range(cfg.inner_steps):
        var: dict[str, dict[str, Tensor]] = {"z": {}, "b": {}, "rows_d": rows_d}
        for layer, m in layers.items():
            if m.bias is not None:
                var["b"][layer] = params[f"{layer}.bias"].expand(n, -1)
            else:
                var["z"][layer] = support["y"].new_zeros(n, m.weight.shape[1])
        step, (loss, x) = step_fn(var, params, factors, support)
        loss0 = loss / -lr if loss0 is None else loss0
        for layer in layers:
            a, b = x[layer], (step["b"] if layer in step["b"] else step["z"])[layer]
            if layer in factors:
                a, b = torch.cat([factors[layer][0], a], -2), torch.cat([factors[layer][1], b], -2)
            factors[layer] = (a, b)
        # Null rows and padding entries of the task-local rows never move.
        rows_d = {
            k: v + step["rows_d"][k] * support["row_mask"].unsqueeze(-1) for k, v in rows_d.items()
        }
        if first_order:
            factors, rows_d = _detach(factors), _detach(rows_d)
    return factors, rows_d, loss0.detach()


def _adaptation(model: RecModel, adapt: str) -> LowRankAdaptation:
    layers = model.adapted_layers(adapt)
    return LowRankAdaptation({name: model.dense_half.get_submodule(name) for name in layers})


# ---------------------------------------------------------------------------------------------
# Public API


def outer_loss(
    model: RecModel,
    sparse: SparseOut,
    batch: Any,
    cfg: MetaConfig,
    normalizer: Tensor | float | None = None,
) -> tuple[Tensor, StepStats]:
    """The outer (meta) loss of one step and its statistics (see the module docstring).

    Args:
        model: a :class:`RecModel`; its ``dense_half`` parameters get the meta-gradients.
        sparse: ``model.embeddings.lookup(batch)``: looked up once for support and query.
        batch: an ``EpisodeBatch`` on the model's device.
        cfg: the meta-learning settings.
        normalizer: divides the sum of per-episode losses; default: valid episodes in ``batch``.
            A distributed trainer passes the global count (see the module docstring).
    """
    valid_count = batch.episode_mask.sum()
    dtype = _dtype(sparse)
    norm = valid_count.clamp_min(1).to(dtype) if normalizer is None else normalizer
    if cfg.mode == "plain":
        ep = _Episodes(model, sparse, batch, None)
        logits = model.dense_half(sparse, batch.dense.to(dtype))
        per_sample = _bce(logits, ep.y)
        K = batch.k_support
        per_episode = _masked_mean(per_sample, torch.cat([ep.s_mask, ep.q_mask], 1))
        s_loss = _masked_mean(per_sample[:, :K].detach(), ep.s_mask)
        q_loss = _masked_mean(per_sample[:, K:].detach(), ep.q_mask)
    else:
        first_order = cfg.mode == "fomaml"
        ep = _Episodes(model, sparse, batch, cfg.adapt, detach_support=first_order)
        adaptation = _adaptation(model, cfg.adapt)
        params = dict(model.dense_half.named_parameters())

        def episode(params: dict, rows_d: dict, sup: dict, qry: dict) -> tuple[Tensor, Tensor]:
            factors, rows_d, s_loss = _inner_loop(
                model, cfg, params, adaptation, rows_d, sup, first_order
            )
            with adaptation.active(factors):
                return _episode_loss(model, params, rows_d, qry), s_loss

        per_episode, s_loss = vmap(episode, in_dims=(None, 0, 0, 0))(
            params, ep.rows_d0, ep.support, ep.query
        )
        q_loss = per_episode.detach()
    loss = (per_episode * ep.valid).sum() / norm
    n = valid_count.clamp_min(1)
    stats = StepStats(
        loss=loss.detach(),
        support_loss=(s_loss * ep.valid).sum() / n,
        query_loss=(q_loss * ep.valid).sum() / n,
        episodes=valid_count,
    )
    return loss, stats


def adapt(model: RecModel, sparse: SparseOut, batch: Any, cfg: MetaConfig) -> Adapted:
    """Adapt every episode on its support set (``cfg.inner_steps`` x ``cfg.inner_lr`` on
    ``cfg.adapt``; ``cfg.mode`` is ignored, so a plain-trained model can be fine-tuned too).

    Evaluation only (``sparse`` from ``model.embeddings.read``): runs without an outer graph and
    returns detached per-episode offsets.
    """
    ep = _Episodes(model, sparse.detach(), batch, cfg.adapt)
    adaptation = _adaptation(model, cfg.adapt)
    params = _detach(dict(model.dense_half.named_parameters()))

    def episode(params: dict, rows_d: dict, sup: dict) -> tuple[Factors, dict]:
        factors, rows_d, _ = _inner_loop(
            model, cfg, params, adaptation, rows_d, sup, first_order=True
        )
        return factors, rows_d

    with torch.enable_grad():
        dense, rows_d = vmap(episode, in_dims=(None, 0, 0))(params, ep.rows_d0, ep.support)
    return Adapted(_detach(dense), _detach(rows_d))


@torch.no_grad()
def predict(
    model: RecModel, sparse: SparseOut, batch: Any, adapted: Adapted | None = None
) -> Tensor:
    """Query logits ``(T, Q)``, at the shared parameters or, given :func:`adapt` output, at each
    episode's adapted parameters. Mask with ``batch.query_mask`` (and known labels)."""
    K = batch.k_support
    query = sparse.detach().side(slice(K, None))
    dense = batch.dense[:, K:].to(_dtype(query))
    if adapted is None:
        return model(query, dense)
    side: dict[str, Any] = {"sparse": query.as_dict(), "dense": dense}
    if adapted.rows:
        side["tinv"] = _task_rows(batch)[2][:, K:]
    params = dict(model.dense_half.named_parameters())
    adaptation = LowRankAdaptation(
        {name: model.dense_half.get_submodule(name) for name in adapted.dense}
    )

    def episode(params: dict, factors: Factors, rows_d: dict, side: dict) -> Tensor:
        with adaptation.active(factors):
            return _episode_logits(model, params, rows_d, side)

    return vmap(episode, in_dims=(None, 0, 0, 0))(params, adapted.dense, adapted.rows, side)
