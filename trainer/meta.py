"""Meta learning on episode batches: MAML, FOMAML and plain training, batched over episodes.

One outer step (what the trainer loop calls)::

    sparse = model.embeddings.lookup(batch)              # ONE lookup for support and query (VSI)
    loss, stats = outer_loss(model, sparse, batch, meta_cfg)
    loss.backward()                                      # dense meta-grads on model.parameters(),
    optimizers.step()                                    # + the rows' gradients (collection)

Inside :func:`outer_loss` (``T`` episodes of ``K`` support + ``Q`` query samples):

1. ``sparse`` (the collection's :class:`~trainer.sparse.SparseOut`, pooled for all ``T x (K+Q)``
   samples at once) is split into support and query sides;
2. the inner loop runs for all episodes together, batched (no ``vmap``, no per-episode loop):
   ``inner_steps`` SGD steps on the masked mean support loss, through ``functional_call`` of the
   dense half; each episode's gradients are those of the sum of the per-episode losses with respect
   to per-episode quantities (the adapted layers' outputs, the task-local row offsets), since an
   episode's loss depends on no other episode's. What adapts (``MetaConfig.adapt``): ``head`` =
   the last ``ModelConfig.head_layers`` layers, ``dense`` = every dense parameter, ``dense+emb``
   = those plus task-local copies of the rows the episode uses (``batch.task_rows``), held as
   zero-initialised offsets pooled by the collection's pooling and added to the pooled fields
   (pooling is linear, so the shared rows are pooled once); null rows never adapt;
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

Beyond MAML (each an option of this same step, checked against a per-task reference and the
distributed = single-process oracle like MAML):

- ``learn_inner_lr`` (Meta-SGD, :mod:`trainer.metasgd`): a flag on ``maml``/``fomaml``, since it
  changes the inner loop's step sizes, not the order of the meta-gradient. The inner loop
  accumulates the negative gradients (the low-rank factors and the rows' sums) and the step sizes
  are applied afterwards (:func:`_stepped`), so the outer loss differentiates them: a per-layer step
  size is the low-rank term's step size, a per-parameter one scales every entry of ``A^T B`` (the
  weight offset is formed).
- ``mode = "film"`` (:mod:`trainer.film`): a mode, since it replaces the inner loop by a forward
  pass: the support samples are encoded into per-layer scales and shifts of the main layers, and
  the loss is the query loss under that modulation.
- ``mode = "metaemb"`` (:mod:`trainer.metaemb`): a mode, since its loss is another sum: the plain
  loss, plus a cold-ID embedding generator's cold-phase and warm-up losses on the batch's (warm)
  ids with the model held fixed.

Loss scaling: the loss is ``sum over valid episodes of the per-episode mean / normalizer``. The
default ``normalizer`` is the number of valid episodes in this batch (a mean over episodes). A
data-parallel trainer passes the GLOBAL number of valid episodes of the step, so that the sum over
ranks of the per-rank losses (and gradients: AllReduce-sum) equals the single-process loss over the
union of the ranks' episodes.

This module never imports ``torch.distributed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from trainer.film import Modulation, modulated, support_features
from trainer.lowrank import Deltas, Factors, LowRankAdaptation, Sums
from trainer.metaemb import pooled_fields, with_id_embedding
from trainer.models import esmm
from trainer.models.build import RecModel
from trainer.sparse import SparseOut

MODES = ("maml", "fomaml", "plain", "film", "metaemb")
ADAPTS = ("head", "dense", "dense+emb")
LEARNED_LRS = ("off", "layer", "parameter")


@dataclass
class MetaConfig:
    """How the outer step learns. Validated on construction."""

    mode: Literal["maml", "fomaml", "plain", "film", "metaemb"] = "maml"
    """``maml`` (second order), ``fomaml`` (first order), ``plain`` (no inner loop), ``film``
    (no inner loop: a support-set encoder modulates the dense layers, :mod:`trainer.film`) or
    ``metaemb`` (plain training plus a generator of cold ids' embeddings, :mod:`trainer.metaemb`)."""
    inner_steps: int = 1
    """SGD steps on each episode's support set (also used by evaluation-time adaptation)."""
    inner_lr: float = 0.1
    """Step size of the inner SGD."""
    adapt: Literal["head", "dense", "dense+emb"] = "dense"
    """What the inner loop adapts: ``head`` (last layers), ``dense`` (all dense parameters) or
    ``dense+emb`` (plus task-local copies of the episode's embedding rows)."""
    learn_inner_lr: Literal["off", "layer", "parameter"] = "off"
    """Meta-SGD (:mod:`trainer.metasgd`): learn the inner step sizes with the outer loss, one per
    adapted layer and table (``layer``) or one per adapted parameter entry (``parameter``), all
    starting at ``inner_lr``; ``maml`` and ``fomaml`` only. Evaluation adapts with them."""
    encoder_hidden: int = 32
    """``mode = "film"``: width of the support-set encoder's per-sample embedding; ``metaemb``:
    the id-embedding generator's hidden width."""
    metaemb_id: str = ""
    """``mode = "metaemb"``: the sparse feature whose embedding is generated for unseen ids (e.g.
    the task key's feature, ``campaign_id``)."""
    metaemb_attributes: tuple[str, ...] = ()
    """``mode = "metaemb"``: the sparse features describing that id, which the generator reads."""
    metaemb_alpha: float = 0.1
    """``mode = "metaemb"``: weight of the cold-phase loss in the generator's loss (the warm-up
    phase gets ``1 - alpha``); the warm-up takes ``inner_steps`` steps of ``inner_lr``."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"meta.mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.adapt not in ADAPTS:
            raise ValueError(f"meta.adapt {self.adapt!r} is not one of {', '.join(ADAPTS)}")
        if self.learn_inner_lr not in LEARNED_LRS:
            raise ValueError(
                f"meta.learn_inner_lr {self.learn_inner_lr!r} is not one of {', '.join(LEARNED_LRS)}"
            )
        if self.learn_inner_lr != "off" and self.mode not in ("maml", "fomaml"):
            raise ValueError(
                f"meta.learn_inner_lr = {self.learn_inner_lr!r} learns the inner loop's step sizes, "
                f"but meta.mode = {self.mode!r} has no inner loop: use mode 'maml' or 'fomaml', "
                "or learn_inner_lr = 'off'"
            )
        if self.encoder_hidden < 1:
            raise ValueError(f"meta.encoder_hidden must be >= 1, got {self.encoder_hidden}")
        self.metaemb_attributes = tuple(self.metaemb_attributes)
        if self.mode == "metaemb" and (
            not self.metaemb_id
            or not self.metaemb_attributes
            or self.metaemb_id in self.metaemb_attributes
        ):
            raise ValueError(
                "meta.mode = 'metaemb' needs meta.metaemb_id (the feature whose cold ids get a "
                "generated embedding) and meta.metaemb_attributes (other features describing it), "
                f"got {self.metaemb_id!r} and {list(self.metaemb_attributes)}"
            )
        if not 0.0 <= self.metaemb_alpha <= 1.0:
            raise ValueError(f"meta.metaemb_alpha must be in [0, 1], got {self.metaemb_alpha}")
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
    ``(T, R, out)`` and step size (:mod:`trainer.lowrank`); ``rows`` maps ``emb``/``linear`` to
    ``(T, M, width)`` offsets of the task-local rows (``dense+emb`` only); ``deltas`` maps
    adapted layers to per-episode weight ``(T, in, out)`` and bias ``(T, out)`` offsets (Meta-SGD
    per parameter, whose update is not low-rank); ``film`` maps modulated layers to per-episode
    ``gamma``/``beta`` ``(T, H)`` (``mode = "film"``)."""

    dense: Factors
    rows: dict[str, Tensor]
    deltas: Deltas = field(default_factory=dict)
    film: Modulation = field(default_factory=dict)
    id_emb: Tensor | None = None
    """``mode = "metaemb"``: the generated and warmed-up embedding of each episode's id ``(T, D)``."""


# ---------------------------------------------------------------------------------------------
# Batch preparation (slicing, masks, labels)


def _labels(model: RecModel, batch: Any, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """Labels ``(T, N)`` (ESMM: ``(T, N, 2)``, :func:`trainer.models.esmm.labels`) and which
    samples have one (None: all)."""
    if model.cfg.task == "esmm":
        return esmm.labels(batch.click, batch.conversion, dtype), None
    if model.cfg.label == "click":
        return batch.click.to(dtype), None
    conv = batch.conversion
    known = conv >= 0
    if model.cfg.label == "clicked_conversion":
        known = known & (batch.click > 0)
    return conv.clamp_min(0).to(dtype), known


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


def _bce(model: RecModel, logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample loss: BCE on the logits, or for ``task = "esmm"`` the CTR + CTCVR loss of the
    stacked ``(..., 2)`` logits and labels (:func:`trainer.models.esmm.sample_loss`)."""
    if model.cfg.task == "esmm":
        return esmm.sample_loss(logits, y)
    return F.binary_cross_entropy_with_logits(logits, y, reduction="none")


class _Episodes:
    """Everything the per-episode functions need, split into support and query sides (dicts of
    tensors with the episode axis first)."""

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
# Per-episode functions, batched over the episodes (leading axis T)
#
# Adapted parameters are never copied per episode: a dense layer's adaptation is a low-rank offset
# applied by the hooks of ``trainer.lowrank`` around the forward; the task-local embedding rows are
# offsets pooled and added to the pooled fields (pooling is linear).


def _episode_logits(model: RecModel, params: dict, rows_d: dict, side: dict) -> Tensor:
    """Logits of the episodes' samples at ``params`` with task-local row offsets ``rows_d``."""
    sparse = SparseOut.from_dict(side["sparse"])
    if "emb" in rows_d:  # task-local copies of the rows: rows + offset, pooled linearly
        pooling = model.embeddings.pooling
        rows, tinv = _flat_rows(rows_d["emb"], side["tinv"])
        lin = rows_d.get("linear")
        sparse = sparse.with_row_offsets(
            pooling.fields(rows, tinv),
            None if lin is None else pooling.lr(lin.flatten(0, 1), tinv),
        )
    return functional_call(model.dense_half, params, (sparse, side["dense"]))


def _flat_rows(rows: Tensor, tinv: Tensor) -> tuple[Tensor, Tensor]:
    """Each episode's rows ``(T, M, W)`` and its samples' indices ``(T, n, S)`` into them, as one
    table ``(T * M, W)`` and indices into it (the pooling reads one table)."""
    T, M = rows.shape[:2]
    shift = torch.arange(T, device=tinv.device).mul_(M).view(T, 1, 1)
    return rows.flatten(0, 1), tinv + shift


def _episode_loss(model: RecModel, params: dict, rows_d: dict, side: dict) -> Tensor:
    logits = _episode_logits(model, params, rows_d, side)
    return _masked_mean(_bce(model, logits, side["y"]), side["m"])


def _detach(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: tuple(x.detach() if isinstance(x, Tensor) else x for x in v)
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
    lrs: dict[str, Tensor],
    adaptation: LowRankAdaptation,
    rows_d: dict[str, Tensor],
    support: dict[str, Any],
    first_order: bool,
) -> tuple[Sums, dict, Tensor]:
    """``inner_steps`` SGD steps on every episode's support loss, all episodes at once.

    Returns the accumulated negative gradients, before the step sizes: per adapted layer the
    low-rank factors ``A`` (inputs) and ``B`` (minus the output gradients), and the task-local
    rows' sums; then the support loss before adaptation per episode. :func:`_stepped` applies the
    step sizes (``cfg.inner_lr``, or Meta-SGD's learned ``lrs``). The gradients are those of the
    sum of the per-episode losses with respect to per-episode tensors: each episode's own, since
    an episode's loss depends on no other episode's samples, layer outputs or row offsets.
    """
    if first_order:  # no outer graph through the inner gradients
        params, support, lrs = _detach(params), _detach(support), _detach(lrs)
    layers = adaptation.layers
    raw: Sums = {}
    raw_rows = rows_d
    loss0 = None
    factors: Factors = {}
    deltas: Deltas = {}
    for _ in range(cfg.inner_steps):
        rows_in = {
            k: v if v.requires_grad else v.detach().requires_grad_() for k, v in rows_d.items()
        }
        with adaptation.active(factors, deltas, leaf_outputs=True) as seen:
            loss = _episode_loss(model, params, rows_in, support)
        # the output gradients per sample (and the row offsets' gradients): of the summed losses
        leaves = [*(seen[layer][1] for layer in layers), *rows_in.values()]
        grads = torch.autograd.grad(
            -loss.sum(), leaves, create_graph=not first_order, materialize_grads=True
        )
        loss0 = loss.detach() if loss0 is None else loss0
        for layer, b in zip(layers, grads, strict=False):
            a = seen[layer][0]
            if layer in raw:
                a, b = torch.cat([raw[layer][0], a], -2), torch.cat([raw[layer][1], b], -2)
            raw[layer] = (a, b)
        # Null rows and padding entries of the task-local rows never move.
        row_grads = dict(zip(rows_d, grads[len(layers) :], strict=True))
        raw_rows = {
            k: v + row_grads[k] * support["row_mask"].unsqueeze(-1) for k, v in raw_rows.items()
        }
        if first_order:
            raw, raw_rows = _detach(raw), _detach(raw_rows)
        deltas, factors, rows_d = _stepped(cfg, lrs, adaptation, raw, raw_rows)
    return raw, raw_rows, loss0


def _stepped(
    cfg: MetaConfig,
    lrs: dict[str, Tensor],
    adaptation: LowRankAdaptation,
    raw: Sums,
    raw_rows: dict[str, Tensor],
) -> tuple[Deltas, Factors, dict[str, Tensor]]:
    """The adapted parameters from :func:`_inner_loop`'s sums, as (full per-episode offsets,
    low-rank factors, row offsets). A step size that is one number per layer (``inner_lr``,
    Meta-SGD per layer) is the factors' step size; Meta-SGD per parameter scales every entry of
    the weight's update ``A^T B`` on its own, which is not low-rank: the weight offset is formed."""
    if not lrs:
        lr = cfg.inner_lr
        return {}, {k: (a, b, lr) for k, (a, b) in raw.items()}, _scaled(raw_rows, {}, lr)
    deltas: Deltas = {}
    factors: Factors = {}
    for layer, (a, b) in raw.items():
        w, bias = f"{layer}.weight", f"{layer}.bias"
        if lrs[w].dim() == 0:
            factors[layer] = (a, b, lrs[w])
            continue
        db = lrs[bias] * b.sum(-2) if adaptation.layers[layer].bias is not None else None
        deltas[layer] = (lrs[w] * (a.transpose(-1, -2) @ b), db)
    return deltas, factors, _scaled(raw_rows, lrs, cfg.inner_lr)


def _scaled(raw_rows: dict[str, Tensor], lrs: dict[str, Tensor], lr: float) -> dict[str, Tensor]:
    return {k: v * (lrs[k] if lrs else lr) for k, v in raw_rows.items()}


def _step_sizes(model: RecModel, cfg: MetaConfig) -> dict[str, Tensor]:
    """Meta-SGD's learned step sizes of ``model`` for ``cfg`` (empty without Meta-SGD)."""
    if cfg.learn_inner_lr == "off":
        return {}
    lrs = model.inner_lrs
    tables = ["emb", "linear"] if cfg.adapt == "dense+emb" else []
    tables = tables if model.embeddings.has_linear else tables[:1]
    if (
        lrs is None
        or lrs.granularity != cfg.learn_inner_lr
        or not lrs.covers(model.adapted_layers(cfg.adapt), tables)
    ):
        raise ValueError(
            f"meta.learn_inner_lr = {cfg.learn_inner_lr!r} with adapt = {cfg.adapt!r} needs the "
            "model's learned step sizes for exactly that setting: build the model with "
            "build_model(..., meta=<that MetaConfig>), or adapt with learn_inner_lr = 'off' and a "
            "fixed inner_lr"
        )
    return lrs.step_sizes()


def _film(model: RecModel, sparse: SparseOut, dense: Tensor, y: Tensor, mask: Tensor) -> Modulation:
    """FiLM parameters per episode from its support samples (``(T, K, ...)``; ``mask`` ``(T, K)``)."""
    if model.task_encoder is None:
        raise ValueError(
            "meta.mode = 'film' needs the model's support-set encoder: build the model with "
            "build_model(..., meta=<the MetaConfig>)"
        )
    if model.cfg.task == "esmm":
        raise ValueError(
            "meta.mode = 'film' encodes one label per support sample; model.task = 'esmm' has two: "
            "use meta.mode 'maml', 'fomaml' or 'plain' with ESMM, or model.task = 'ctr'"
        )
    if sparse.fields is None:
        raise ValueError(
            "meta.mode = 'film' encodes the support samples from their pooled field embeddings, "
            "which this embedding collection substitutes (parallel.des): set parallel.des = 'off'"
        )
    return model.task_encoder(support_features(sparse.pooled(), dense, y), mask)


def _adaptation(model: RecModel, adapt: str) -> LowRankAdaptation:
    layers = model.adapted_layers(adapt)
    return LowRankAdaptation({name: model.dense_half.get_submodule(name) for name in layers})


def _metaemb_phases(
    model: RecModel, cfg: MetaConfig, sparse: SparseOut, batch: Any, ep: _Episodes, train: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """MetaEmb's cold and warm-up phases with the model held fixed (:mod:`trainer.metaemb`):
    the per-episode support loss at the generated id embedding, the query loss after the
    warm-up steps, and the warmed-up embedding ``(T, D)``. ``train``: keep the graph through the
    warm-up gradients (second order, as in the paper)."""
    gen = model.id_generator
    if gen is None:
        raise ValueError(
            "meta.mode = 'metaemb' needs the model's id-embedding generator: build the model with "
            "build_model(..., meta=<the MetaConfig>)"
        )
    K = batch.k_support
    dense = batch.dense.to(ep.y.dtype)
    params = _detach(dict(model.dense_half.named_parameters()))
    support, query = sparse.detach().side(slice(0, K)), sparse.detach().side(slice(K, None))

    def loss(e: Tensor, side: SparseOut, sl: slice, mask: Tensor) -> Tensor:
        side = with_id_embedding(side, gen.id_field, e)
        logits = functional_call(model.dense_half, params, (side, dense[:, sl]))
        return _masked_mean(_bce(model, logits, ep.y[:, sl]), mask)

    e = gen(pooled_fields(support), ep.s_mask)
    cold = loss(e, support, slice(0, K), ep.s_mask)
    step_loss = cold
    for step in range(cfg.inner_steps):
        if step:
            step_loss = loss(e, support, slice(0, K), ep.s_mask)
        (g,) = torch.autograd.grad(step_loss.sum(), e, create_graph=train)
        e = e - cfg.inner_lr * g
    return cold, loss(e, query, slice(K, None), ep.q_mask), e


# ---------------------------------------------------------------------------------------------
# The outer loss of each method

Losses = tuple[_Episodes, Tensor, Tensor, Tensor]
"""The episodes, the per-episode loss (with its graph), and the detached support and query
losses per episode (:class:`StepStats`)."""


def _plain_losses(model: RecModel, sparse: SparseOut, batch: Any, cfg: MetaConfig) -> Losses:
    """No adaptation: each episode's loss over its support and query samples."""
    ep = _Episodes(model, sparse, batch, None)
    logits = model.dense_half(sparse, batch.dense.to(_dtype(sparse)))
    per_sample = _bce(model, logits, ep.y)
    K = batch.k_support
    per_episode = _masked_mean(per_sample, torch.cat([ep.s_mask, ep.q_mask], 1))
    s_loss = _masked_mean(per_sample[:, :K].detach(), ep.s_mask)
    q_loss = _masked_mean(per_sample[:, K:].detach(), ep.q_mask)
    return ep, per_episode, s_loss, q_loss


def _metaemb_losses(model: RecModel, sparse: SparseOut, batch: Any, cfg: MetaConfig) -> Losses:
    """The plain loss plus the generator's (:func:`_metaemb_phases`); the statistics are the
    cold-phase support loss and the warm-up query loss."""
    ep, plain, _, _ = _plain_losses(model, sparse, batch, cfg)
    cold, warm, _ = _metaemb_phases(model, cfg, sparse, batch, ep, train=True)
    a = cfg.metaemb_alpha
    return ep, plain + a * cold + (1 - a) * warm, cold.detach(), warm.detach()


def _film_losses(model: RecModel, sparse: SparseOut, batch: Any, cfg: MetaConfig) -> Losses:
    """The query loss under the modulation encoded from the support set; the support statistic
    is the loss of the unconditioned (empty support set) model."""
    ep = _Episodes(model, sparse, batch, None)
    K = batch.k_support
    dense = batch.dense.to(_dtype(sparse))
    support, query = sparse.side(slice(0, K)), sparse.side(slice(K, None))
    film = _film(model, support, dense[:, :K], ep.y[:, :K], ep.s_mask)
    with modulated(model.dense_half, film):
        logits = model.dense_half(query, dense[:, K:])
    per_episode = _masked_mean(_bce(model, logits, ep.y[:, K:]), ep.q_mask)
    with torch.no_grad():
        empty = _film(model, support, dense[:, :K], ep.y[:, :K], ep.s_mask * 0)
        with modulated(model.dense_half, empty):
            s_logits = model.dense_half(support, dense[:, :K])
        s_loss = _masked_mean(_bce(model, s_logits, ep.y[:, :K]), ep.s_mask)
    return ep, per_episode, s_loss, per_episode.detach()


def _inner_loop_losses(model: RecModel, sparse: SparseOut, batch: Any, cfg: MetaConfig) -> Losses:
    """MAML / FOMAML (with Meta-SGD's step sizes when learned): the query loss after the inner
    loop on the support set, all episodes at once."""
    first_order = cfg.mode == "fomaml"
    ep = _Episodes(model, sparse, batch, cfg.adapt, detach_support=first_order)
    adaptation = _adaptation(model, cfg.adapt)
    params = dict(model.dense_half.named_parameters())
    lrs = _step_sizes(model, cfg)
    raw, raw_rows, s_loss = _inner_loop(
        model, cfg, params, lrs, adaptation, ep.rows_d0, ep.support, first_order
    )
    deltas, factors, rows_d = _stepped(cfg, lrs, adaptation, raw, raw_rows)
    with adaptation.active(factors, deltas=deltas):
        per_episode = _episode_loss(model, params, rows_d, ep.query)
    return ep, per_episode, s_loss, per_episode.detach()


# ---------------------------------------------------------------------------------------------
# Public API


def export_refusal(cfg: MetaConfig) -> str | None:
    """Why a model trained with ``cfg`` cannot be exported yet (None: it can). The exported
    model adapts with one fixed step size and has no support-set encoder."""
    if cfg.mode in ("film", "metaemb"):
        what = "support-set encoder" if cfg.mode == "film" else "id-embedding generator"
        return (
            f"meta.mode = {cfg.mode!r}: the exported model cannot carry the {what} yet; "
            "evaluate the checkpoint with the trainer (eval.json), or train with another meta.mode"
        )
    if cfg.learn_inner_lr != "off":
        return (
            f"meta.learn_inner_lr = {cfg.learn_inner_lr!r}: the exported model cannot carry the "
            "learned inner step sizes yet (it adapts with one fixed step size); evaluate the "
            "checkpoint with the trainer (eval.json), or train with learn_inner_lr = 'off'"
        )
    return None


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
    losses = {"plain": _plain_losses, "metaemb": _metaemb_losses, "film": _film_losses}
    ep, per_episode, s_loss, q_loss = losses.get(cfg.mode, _inner_loop_losses)(
        model, sparse, batch, cfg
    )
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
    """Adapt every episode on its support set: ``cfg.inner_steps`` SGD steps on ``cfg.adapt`` of
    ``cfg.inner_lr`` or, with ``cfg.learn_inner_lr``, of the model's learned step sizes (Meta-SGD;
    other ``cfg.mode`` values are ignored, so a plain-trained model can be fine-tuned too). A model
    with a support-set encoder (``mode = "film"``) adapts by encoding the support set: one forward
    pass, no gradient step (``inner_steps``/``inner_lr``/``adapt`` do not apply).

    Evaluation only (``sparse`` from ``model.embeddings.read``): runs without an outer graph and
    returns detached per-episode offsets.
    """
    if model.id_generator is not None:
        ep = _Episodes(model, sparse, batch, None)
        with torch.enable_grad():
            e = _metaemb_phases(model, cfg, sparse, batch, ep, train=False)[2]
        return Adapted({}, {}, id_emb=e.detach())
    if model.task_encoder is not None:
        ep = _Episodes(model, sparse, batch, None)
        K = batch.k_support
        dense = batch.dense[:, :K].to(_dtype(sparse))
        with torch.no_grad():
            film = _film(model, sparse.detach().side(slice(0, K)), dense, ep.y[:, :K], ep.s_mask)
        return Adapted({}, {}, film=film)
    ep = _Episodes(model, sparse.detach(), batch, cfg.adapt)
    adaptation = _adaptation(model, cfg.adapt)
    params = _detach(dict(model.dense_half.named_parameters()))
    lrs = _detach(_step_sizes(model, cfg))
    with torch.enable_grad():
        raw, raw_rows, _ = _inner_loop(
            model, cfg, params, lrs, adaptation, ep.rows_d0, ep.support, first_order=True
        )
    deltas, dense, rows_d = _stepped(cfg, lrs, adaptation, raw, raw_rows)
    return Adapted(_detach(dense), _detach(rows_d), _detach(deltas))


@torch.no_grad()
def predict(
    model: RecModel, sparse: SparseOut, batch: Any, adapted: Adapted | None = None
) -> Tensor:
    """Query logits ``(T, Q)``, at the shared parameters or, given :func:`adapt` output, at each
    episode's adapted parameters. Mask with ``batch.query_mask`` (and known labels). A model with
    a support-set encoder (``mode = "film"``) predicts without adaptation as for an empty support
    set (the encoder's output for no samples)."""
    K = batch.k_support
    query = sparse.detach().side(slice(K, None))
    dense = batch.dense[:, K:].to(_dtype(query))
    gen = model.id_generator
    if gen is not None:  # MetaEmb: the id's embedding generated (and warmed up when adapted)
        if adapted is None:
            _, q_mask = _masks(batch, None, dense.dtype)
            emb = gen(pooled_fields(query), q_mask)
        else:
            emb = adapted.id_emb
        return model(with_id_embedding(query, gen.id_field, emb), dense)
    if adapted is None and model.task_encoder is not None:
        T = dense.shape[0]
        nothing = dense.new_zeros(T, 1, model.task_encoder.embed.in_features)
        adapted = Adapted({}, {}, film=model.task_encoder(nothing, dense.new_zeros(T, 1)))
    if adapted is None:
        return model(query, dense)
    side: dict[str, Any] = {"sparse": query.as_dict(), "dense": dense}
    if adapted.rows:
        side["tinv"] = _task_rows(batch)[2][:, K:]
    params = dict(model.dense_half.named_parameters())
    adaptation = LowRankAdaptation(
        {name: model.dense_half.get_submodule(name) for name in [*adapted.dense, *adapted.deltas]}
    )
    with (
        adaptation.active(adapted.dense, deltas=adapted.deltas),
        modulated(model.dense_half, adapted.film),
    ):
        return _episode_logits(model, params, adapted.rows, side)
