"""``ModelConfig`` and ``build_model``: one entry point for the model zoo.

    model = build_model(ModelConfig(arch="deepfm", embedding_dim=16, mlp=(256, 128)), layout)
    sparse = model.embeddings.lookup(batch)                    # one lookup per step (VSI), pooled
    logits = model(sparse, batch.dense)                        # (T, N)

A :class:`RecModel` is the dense half (``dense_half``: every dense parameter, a pure
``forward(sparse, dense) -> logit``) and the injected embedding collection (``embeddings``, a
:class:`~trainer.sparse.EmbeddingCollection` held as a plain attribute: not a submodule, so
``model.parameters()`` are exactly the dense parameters that Adam updates, and a sharded
collection can be passed in instead). The collection owns the rows and the pooling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trainer.embeddings import PlainEmbeddingCollection
from trainer.film import TaskEncoder
from trainer.metaemb import IdEmbeddingGenerator
from trainer.metasgd import InnerLearningRates
from trainer.models.common import FieldLinear, Linear
from trainer.models.deepfm import DeepFMDense
from trainer.models.dlrm import DLRMDense
from trainer.models.esmm import TASKS, ESMMDense
from trainer.models.melu import MeLUDense
from trainer.models.wide_deep import WideDeepDense
from trainer.sparse import EmbeddingCollection, SparseOut

ARCHS = ("dlrm", "deepfm", "wide_deep", "melu")
LINEAR_ARCHS = ("deepfm", "wide_deep")
"""Architectures with first-order terms: their collection also holds the 1-wide linear table."""
ADAPT_SCOPES = ("head", "dense", "dense+emb")
LABELS = ("click", "conversion", "clicked_conversion")


@dataclass
class ModelConfig:
    """The model: architecture and sizes. Validated on construction."""

    arch: Literal["dlrm", "deepfm", "wide_deep", "melu"] = "dlrm"
    """Model family: DLRM (dot interaction), DeepFM (LR + FM + deep), Wide&Deep, MeLU (concat MLP)."""
    embedding_dim: int = 16
    """Width of every field embedding."""
    mlp: tuple[int, ...] = (256, 128)
    """Hidden widths of the main MLP (DLRM: top MLP; others: deep tower / decision layers). A final
    1-wide output layer is appended, so ``(256, 128)`` is the 256-128-1 MLP."""
    bottom_mlp: tuple[int, ...] = (64,)
    """DLRM only: hidden widths of the bottom MLP on dense features (its output is ``embedding_dim``)."""
    head_layers: int = 2
    """``adapt = "head"`` adapts the last ``head_layers`` linear layers of the main MLP."""
    label: Literal["click", "conversion", "clicked_conversion"] = "click"
    """The label predicted; ``conversion`` masks samples whose conversion is unknown (-1);
    ``clicked_conversion`` is the classic CVR model's: the conversion, on clicked samples with a
    known conversion only (the baseline of ``task = "esmm"``, ``bench/esmm.py``)."""
    embedding_init_std: float = 0.01
    """Std of the normal initialisation of the embedding rows (null rows are zero)."""
    task: Literal["ctr", "esmm"] = "ctr"
    """``ctr``: one tower predicting ``label``; ``esmm``: a CTR and a CVR tower of ``arch`` over the
    shared embeddings, trained on CTR and CTCVR over all impressions (:mod:`trainer.models.esmm`;
    the model outputs ``(..., 2)`` logits ``[ctr, cvr]``; ``label`` must stay ``click``)."""

    def __post_init__(self) -> None:
        self.mlp = tuple(self.mlp)
        self.bottom_mlp = tuple(self.bottom_mlp)
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.embedding_dim < 1:
            raise ValueError(f"model.embedding_dim must be >= 1, got {self.embedding_dim}")
        if not self.mlp or any(w < 1 for w in self.mlp):
            raise ValueError(
                f"model.mlp must list at least one positive hidden width (e.g. [256, 128]), got {list(self.mlp)}"
            )
        if any(w < 1 for w in self.bottom_mlp):
            raise ValueError(
                f"model.bottom_mlp widths must be positive, got {list(self.bottom_mlp)}"
            )
        n_layers = len(self.mlp) + 1
        if not 1 <= self.head_layers <= n_layers:
            raise ValueError(
                f"model.head_layers must be between 1 and {n_layers} (the layers of mlp={list(self.mlp)} "
                f"plus the output layer), got {self.head_layers}"
            )
        if self.label not in LABELS:
            raise ValueError(f"model.label must be one of {', '.join(LABELS)}, got {self.label!r}")
        if self.task not in TASKS:
            raise ValueError(f"model.task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.task == "esmm" and self.label != "click":
            raise ValueError(
                "model.task = 'esmm' learns click and conversion together (CTR and CTCVR losses): "
                f"leave model.label = 'click', got {self.label!r}"
            )
        if self.embedding_init_std < 0:
            raise ValueError(
                f"model.embedding_init_std must be >= 0, got {self.embedding_init_std}"
            )


class RecModel(nn.Module):
    """Dense half + injected embeddings (see the module docstring), and the parameters of the
    meta-learning method when it has some (``build_model(..., meta=)``): ``inner_lrs``
    (Meta-SGD, :mod:`trainer.metasgd`), ``task_encoder`` (FiLM, :mod:`trainer.film`) and
    ``id_generator`` (MetaEmb, :mod:`trainer.metaemb`), None otherwise. They are submodules, so
    Adam, the dense all-reduce and checkpoints carry them."""

    embeddings: EmbeddingCollection
    inner_lrs: InnerLearningRates | None
    task_encoder: TaskEncoder | None
    id_generator: IdEmbeddingGenerator | None

    def __init__(
        self, cfg: ModelConfig, dense_half: nn.Module, embeddings: EmbeddingCollection
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.dense_half = dense_half
        self.inner_lrs = None
        self.task_encoder = None
        self.id_generator = None
        object.__setattr__(self, "embeddings", embeddings)  # never a submodule (see docstring)

    def forward(self, sparse: SparseOut, dense: Tensor) -> Tensor:
        """Logits ``(...,)`` for ``sparse`` (from ``embeddings.lookup``/``read``) and ``dense``
        ``(..., Dn)``; ``(..., 2)`` (``[ctr, cvr]``) for ``task = "esmm"``."""
        return self.dense_half(sparse, dense)

    def first_field_layers(self) -> list[tuple[str, Linear]]:
        """The field part of each tower's first deep layer (module name in ``dense_half`` and the
        layer), which a collection may apply itself (``SparseOut.h1``), in module order (tower
        ``k`` reads ``SparseOut.tower(k)``): one, two for ESMM, none for DLRM."""
        return [
            (f"{name}.from_fields", module.from_fields)
            for name, module in self.dense_half.named_modules()
            if isinstance(module, FieldLinear)
        ]

    def adapted_names(self, adapt: str) -> list[str]:
        """Dense parameter names that the inner loop adapts for ``adapt`` (``MetaConfig.adapt``)."""
        if adapt not in ADAPT_SCOPES:
            raise ValueError(f"adapt {adapt!r} is not one of {', '.join(ADAPT_SCOPES)}")
        if adapt == "head" and isinstance(self.dense_half, ESMMDense):
            layers = self.dense_half.head_layer_names(self.cfg.head_layers)
            return [name for layer in layers for name in layer]
        if adapt == "head":
            layers = self.dense_half.layer_names()[-self.cfg.head_layers :]
            return [name for layer in layers for name in layer]
        return [name for name, _ in self.dense_half.named_parameters()]

    def adapted_layers(self, adapt: str) -> list[str]:
        """The :class:`~trainer.models.common.Linear` layers (module names in ``dense_half``) whose
        parameters ``adapt`` selects: meta learning adapts whole layers (weight and bias)."""
        names = self.adapted_names(adapt)
        layers = sorted({n.rsplit(".", 1)[0] for n in names})
        for layer in layers:
            module = self.dense_half.get_submodule(layer)
            assert isinstance(module, Linear), (
                f"{layer}: adaptable parameters must live in a Linear"
            )
            own = {f"{layer}.{k}" for k, _ in module.named_parameters()}
            assert own <= set(names), f"{layer}: a layer adapts all its parameters or none"
        return layers

    def modulated_layers(self) -> dict[str, int]:
        """The main-path layers that FiLM modulates (module name in ``dense_half`` -> output
        width), input to output: one per layer of ``layer_names()``; a deep tower's first layer is
        its ``FieldLinear`` (whose output sums the field and dense parts)."""
        out = {}
        for names in self.dense_half.layer_names():
            name = names[0].rsplit(".", 1)[0]
            parent = name.rsplit(".", 1)[0]
            if isinstance(self.dense_half.get_submodule(parent), FieldLinear):
                name = parent
            bias = next(n for n in names if n.endswith(".bias"))
            out[name] = int(self.dense_half.get_parameter(bias).numel())
        return out


def build_meta_modules(model: RecModel, meta: Any, layout: Any, *, seed: int = 0) -> None:
    """Give ``model`` the parameters of ``meta``'s method (a ``MetaConfig``): Meta-SGD's step
    sizes (``meta.learn_inner_lr``), FiLM's support-set encoder (``meta.mode = "film"``) and
    MetaEmb's id-embedding generator (``meta.mode = "metaemb"``); the networks are initialised from
    ``seed`` without touching the global RNG state.

    Raises:
        ValueError: ``meta.metaemb_id`` or ``meta.metaemb_attributes`` name a feature the layout
            does not have.
    """
    cfg = model.cfg
    if meta.learn_inner_lr != "off":
        layers = {n: model.dense_half.get_submodule(n) for n in model.adapted_layers(meta.adapt)}
        tables = {}
        if meta.adapt == "dense+emb":
            tables["emb"] = cfg.embedding_dim
            if model.embeddings.has_linear:
                tables["linear"] = 1
        model.inner_lrs = InnerLearningRates(layers, tables, meta.learn_inner_lr, meta.inner_lr)
    if meta.mode == "film":
        width = len(layout.table_offsets) * cfg.embedding_dim + int(layout.dense_width) + 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.task_encoder = TaskEncoder(width, meta.encoder_hidden, model.modulated_layers())
    if meta.mode == "metaemb":
        names = list(layout.feature_names)
        unknown = [n for n in (meta.metaemb_id, *meta.metaemb_attributes) if n not in names]
        if unknown:
            raise ValueError(
                f"meta.metaemb_id / meta.metaemb_attributes name {unknown}, which are not sparse "
                f"features of this data (features: {', '.join(names)})"
            )
        attributes = [names.index(n) for n in meta.metaemb_attributes]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.id_generator = IdEmbeddingGenerator(
                names.index(meta.metaemb_id), attributes, cfg.embedding_dim, meta.encoder_hidden
            )


def build_embeddings(
    cfg: ModelConfig, layout: Any, *, seed: int = 0, device: torch.device | str | None = None
) -> PlainEmbeddingCollection:
    """The plain (single-process reference) collection for ``cfg`` over ``layout``'s tables."""
    return PlainEmbeddingCollection(
        layout.table_offsets,
        layout.total_rows,
        cfg.embedding_dim,
        layout.slot_feature,
        linear=cfg.arch in LINEAR_ARCHS,
        init_std=cfg.embedding_init_std,
        seed=seed,
        device=device,
    )


def _dense_half(cfg: ModelConfig, num_fields: int, dense_width: int) -> nn.Module:
    """One tower of ``cfg.arch`` (from the current RNG state)."""
    d = cfg.embedding_dim
    if cfg.arch == "dlrm":
        return DLRMDense(num_fields, d, dense_width, cfg.bottom_mlp, cfg.mlp)
    if cfg.arch == "deepfm":
        return DeepFMDense(num_fields, d, dense_width, cfg.mlp)
    if cfg.arch == "wide_deep":
        return WideDeepDense(num_fields, d, dense_width, cfg.mlp)
    return MeLUDense(num_fields, d, dense_width, cfg.mlp)


def build_model(
    cfg: ModelConfig,
    layout: Any,
    embeddings: EmbeddingCollection | None = None,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    meta: Any | None = None,
) -> RecModel:
    """Build ``cfg.arch`` for a ``FeatureLayout`` (``slot_feature``, ``table_offsets``,
    ``total_rows``, ``dense_width``).

    ``embeddings``: the collection to inject (default: a plain collection seeded with
    ``seed + 1``). Dense parameters are initialised from ``seed`` without touching the global
    RNG state. ``meta``: the ``MetaConfig`` whose method has parameters of its own
    (:func:`build_meta_modules`; None: none).

    Raises:
        ValueError: the layout or the injected collection does not fit the config.
    """
    num_fields = len(layout.table_offsets)
    dense_width = int(layout.dense_width)
    if num_fields < 1:
        raise ValueError(
            "the feature layout has no sparse features; every model needs at least one"
        )
    if cfg.arch == "dlrm" and num_fields + (1 if dense_width else 0) < 2:
        raise ValueError(
            "DLRM's dot interaction needs at least two vectors (fields + dense output)"
        )
    if embeddings is None:
        embeddings = build_embeddings(cfg, layout, seed=seed + 1, device=device)
    if embeddings.dim != cfg.embedding_dim:
        raise ValueError(
            f"the embedding collection has dim {embeddings.dim}, model.embedding_dim is {cfg.embedding_dim}"
        )
    if embeddings.total_rows != layout.total_rows:
        raise ValueError(
            f"the embedding collection has {embeddings.total_rows} rows, the feature layout "
            f"{layout.total_rows}: built for another manifest?"
        )
    if cfg.arch in LINEAR_ARCHS and not embeddings.has_linear:
        raise ValueError(f"model.arch {cfg.arch!r} needs a collection with the 1-wide linear table")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dense_half = _dense_half(cfg, num_fields, dense_width)
        if cfg.task == "esmm":  # the CVR tower initialised after the CTR tower
            dense_half = ESMMDense(dense_half, _dense_half(cfg, num_fields, dense_width))
    if embeddings.pooling.num_fields != num_fields:
        raise ValueError(
            f"the embedding collection pools {embeddings.pooling.num_fields} fields, the feature "
            f"layout has {num_fields}"
        )
    model = RecModel(cfg, dense_half, embeddings)
    if meta is not None:
        build_meta_modules(model, meta, layout, seed=seed + 2)
    return model.to(device=embeddings.device, dtype=embeddings.dtype)
