"""Load an exported model: verify every checksum, read tensors without pickle, rebuild the model.

    model = load_exported("out/models/click-dlrm/v3")     # refuses a tampered or partial export
    rows = model.lookup(ids)                              # (U,) sorted unique global ids: rows
    logits = model.logits(rows, inverse, dense)           # no adaptation: the exported graph
    logits = model.episode_logits(batch, adapt=True)      # adapted per episode on its support set

Two forms of the dense network, for two kinds of consumers:

- the ``torch.export`` graph (``dense/graph.pt2``): gathered rows + inverse + dense features in,
  logits out. It needs only torch (no metarec classes), so a torch-only service or AOTInductor
  can serve it; ``load_exported`` uses it for unadapted scores.
- the parameters as ``.npy`` plus the model config (``model.json``): the model is rebuilt with
  :func:`trainer.models.build_model` and the tensors copied in. Adaptation needs this form: the
  inner loop differentiates the dense half (``functional_call`` in :mod:`trainer.meta`),
  and running the trainer's own :func:`~trainer.meta.adapt` / :func:`~trainer.meta.predict` is what
  makes serving-time adaptation equal evaluation-time adaptation.

The graph is cross-checked against the rebuilt model on a probe when loaded; when it cannot be
used (another torch version, a mismatch), scoring falls back to the rebuilt model with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainer import meta
from trainer.config_loader import build
from trainer.data.batch import EpisodeBatch, FeatureLayout
from trainer.data.contract import DenseSpec, FeatureSpec
from trainer.exported.artifact import (
    FEATURES_FILE,
    FORMAT,
    FORMAT_VERSION,
    GRAPH_FILE,
    LINEAGE_FILE,
    METRICS_FILE,
    ExportError,
    read_json,
)
from trainer.exported.delta import chain, materialize
from trainer.exported.id_maps import IdMaps, materialize_id_maps
from trainer.exported.tensors import load_array, load_graph
from trainer.meta import MetaConfig
from trainer.models import ModelConfig, RecModel, build_model
from trainer.sparse import Batch, Pooling, SparseOut

log = logging.getLogger(__name__)
GRAPH_ATOL = 1e-5


@dataclass
class GatheredRows:
    """The rows of sorted unique ids, as the exported graph takes them: ``emb`` ``(U, D)`` and
    ``linear`` ``(U, 1)`` (None without a linear table)."""

    emb: Tensor
    linear: Tensor | None


class TableEmbeddings:
    """A read-only embedding collection over exported tables (numpy, possibly memory-mapped):
    the ``read`` side of :class:`trainer.sparse.EmbeddingCollection` (no training).

    Ids are global ids of ``layout`` (what the encoder and the episodes carry). With dynamic
    tables (``id_maps``) the tables are the physical ones and each id reads the row its map gives
    (:class:`~trainer.exported.id_maps.IdMaps`); otherwise an id is its row.
    """

    def __init__(
        self,
        emb: np.ndarray,
        linear: np.ndarray | None,
        layout: FeatureLayout,
        id_maps: IdMaps | None = None,
    ) -> None:
        rows = layout.total_rows if id_maps is None else id_maps.physical_rows
        if emb.shape[0] != rows:
            raise ExportError(
                f"the embedding table has {emb.shape[0]} rows, the feature layout"
                f"{' (dynamic tables: physical rows)' if id_maps else ''} {rows}; re-export"
            )
        self.emb, self.linear, self.id_maps = emb, linear, id_maps
        self.total_rows, self.dim = int(layout.total_rows), int(emb.shape[1])
        self.null_ids = np.asarray(layout.table_offsets, dtype=np.int64)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.pooling = Pooling(layout.slot_feature, len(layout.table_offsets))

    @property
    def has_linear(self) -> bool:
        return self.linear is not None

    def rows(self, ids: Tensor) -> GatheredRows:
        """Rows of ``ids`` (sorted unique global ids); only those rows are read from the tables."""
        idx = ids.cpu().numpy()
        if self.id_maps is not None:
            idx = self.id_maps.rows_of(idx)
        emb = torch.from_numpy(np.take(self.emb, idx, axis=0))
        lin = None if self.linear is None else torch.from_numpy(np.take(self.linear, idx, axis=0))
        return GatheredRows(emb, lin)

    def read(self, batch: Batch) -> SparseOut:
        """The pooled rows of ``batch`` (what adaptation and prediction take)."""
        got = self.rows(batch.ids)
        return self.pooling(got.emb, got.linear, batch.inverse)

    def is_null(self, ids: Tensor) -> Tensor:
        return torch.from_numpy(np.isin(ids.cpu().numpy(), self.null_ids))


class DenseGraph(nn.Module):
    """``RecModel.forward`` after the lookup: unique rows ``emb`` ``(U, D)`` (and ``linear``
    ``(U, 1)``), ``inverse`` ``(N, S)`` and ``dense`` ``(N, Dn)`` -> logits ``(N,)``. This is the
    module exported as the graph, so the graph runs exactly the trainer's operators (the
    collection's pooling, then the dense half)."""

    def __init__(self, model: RecModel) -> None:
        super().__init__()
        self.pooling, self.dense_half = model.embeddings.pooling, model.dense_half

    def forward(
        self, emb: Tensor, inverse: Tensor, dense: Tensor, linear: Tensor | None = None
    ) -> Tensor:
        return self.dense_half(self.pooling(emb, linear, inverse), dense)


def layout_of(spec: dict[str, Any]) -> FeatureLayout:
    """The :class:`FeatureLayout` of a ``feature_spec.json`` (what the manifest gives the trainer)."""
    features = [FeatureSpec(**f) for f in spec["features"]]
    dense = sorted((DenseSpec(**d) for d in spec["dense_features"]), key=lambda d: d.index)
    slot_feature = [i for i, f in enumerate(features) for _ in range(f.slots)]
    offsets = np.concatenate([[0], np.cumsum([f.buckets for f in features])[:-1]]).tolist()
    return FeatureLayout(
        feature_names=tuple(f.name for f in features),
        feature_slots=tuple(f.slots for f in features),
        feature_buckets=tuple(f.buckets for f in features),
        table_offsets=tuple(int(o) for o in offsets),
        total_rows=sum(f.buckets for f in features),
        slot_feature=torch.tensor(slot_feature, dtype=torch.int64),
        slot_offsets=torch.tensor([int(offsets[i]) for i in slot_feature], dtype=torch.int64),
        dense_names=tuple(d.name for d in dense),
        k_support=int(spec["k_support"]),
        q_query=int(spec["q_query"]),
    )


@dataclass
class ExportedModel:
    """A loaded export (see the module docstring); CPU, float32, read-only."""

    path: Path
    name: str
    version: str
    model: RecModel
    layout: FeatureLayout
    adaptation: MetaConfig
    """Serving-time adaptation: evaluation's inner loop (``TrainerConfig.eval_meta()``)."""
    spec: dict[str, Any]
    """``feature_spec.json``: features, dense features, task key, K, Q, min sizes, hash contract."""
    lineage: dict[str, Any]
    metrics: dict[str, Any] | None
    graph: nn.Module | None = None
    descriptor: dict[str, Any] = field(default_factory=dict)

    @property
    def embeddings(self) -> TableEmbeddings:
        return self.model.embeddings

    @property
    def features(self) -> list[FeatureSpec]:
        return [FeatureSpec(**f) for f in self.spec["features"]]

    @property
    def dense_features(self) -> list[DenseSpec]:
        return sorted((DenseSpec(**d) for d in self.spec["dense_features"]), key=lambda d: d.index)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The trailing shape of one sample's logits: ``()``, or ``(2,)`` (``[ctr, cvr]``) for an
        ESMM model (``model.task = "esmm"``; pCTCVR = sigmoid(ctr) * sigmoid(cvr))."""
        return (2,) if self.model.cfg.task == "esmm" else ()

    def lookup(self, ids: Tensor) -> GatheredRows:
        return self.embeddings.rows(ids)

    @torch.no_grad()
    def logits(
        self, rows: GatheredRows, inverse: Tensor, dense: Tensor, eager: bool = False
    ) -> Tensor:
        """Unadapted logits ``(..., *output_shape)`` for ``inverse`` ``(..., S)`` and ``dense``
        ``(..., Dn)``; through the graph unless ``eager`` or no graph is loaded."""
        if eager or self.graph is None:
            sparse = self.embeddings.pooling(rows.emb, rows.linear, inverse)
            return self.model(sparse, dense.to(rows.emb.dtype))
        S, Dn = inverse.shape[-1], dense.shape[-1]
        args = [rows.emb, inverse.reshape(-1, S), dense.reshape(-1, Dn).to(rows.emb.dtype)]
        if rows.linear is not None:
            args.append(rows.linear)
        return self.graph(*args).reshape(*inverse.shape[:-1], *self.output_shape)

    def episode_logits(self, batch: EpisodeBatch, adapt: bool, eager: bool = False) -> Tensor:
        """Query logits ``(T, Q, *output_shape)`` of an episode batch, unadapted or adapted per episode on its
        support set with :attr:`adaptation` (the trainer's :func:`~trainer.meta.adapt`)."""
        K = batch.k_support
        if not adapt:
            rows = self.lookup(batch.ids)
            return self.logits(rows, batch.inverse[:, K:], batch.dense[:, K:], eager=eager)
        sparse = self.embeddings.read(batch)
        adapted = meta.adapt(self.model, sparse, batch, self.adaptation)
        return meta.predict(self.model, sparse, batch, adapted)


def _check_graph(model: ExportedModel) -> None:
    """Drop the graph (warning) unless it reproduces the rebuilt model on a fixed probe."""
    gen = torch.Generator().manual_seed(0)
    S, Dn = model.layout.sparse_width, model.layout.dense_width
    local = torch.randint(0, 1 << 30, (8, S), generator=gen) % torch.tensor(
        [model.layout.feature_buckets[i] for i in model.layout.slot_feature.tolist()]
    )
    ids, inverse = torch.unique(local + model.layout.slot_offsets, return_inverse=True)
    dense = torch.rand(8, Dn, generator=gen)
    rows = model.lookup(ids)
    try:
        got = model.logits(rows, inverse, dense)
    except Exception as e:  # an archive from another torch version may not run here
        log.warning("%s: the exported graph does not run (%s); scoring with the rebuilt model",
                    model.path, e)  # fmt: skip
        model.graph = None
        return
    want = model.logits(rows, inverse, dense, eager=True)
    if not torch.allclose(got, want, rtol=GRAPH_ATOL, atol=GRAPH_ATOL):
        log.warning("%s: the exported graph disagrees with the rebuilt model (max diff %.3g); "
                    "scoring with the rebuilt model", model.path, (got - want).abs().max())  # fmt: skip
        model.graph = None


def load_exported(path: str | Path, *, mmap: bool = True, graph: bool = True) -> ExportedModel:
    """Load an export after verifying it; never unpickles (see :mod:`trainer.exported.tensors`).

    Args:
        path: the version directory (``<root>/<name>/v<N>``); a delta export is loaded with its
            chain of base versions (:mod:`trainer.exported.delta`), every link verified first.
        mmap: memory-map the embedding tables (only looked-up rows are read into memory); the
            tables of a delta export are built in memory.
        graph: also load the ``torch.export`` graph (the rebuilt model serves when False).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ExportError: incomplete (no ``CHECKSUMS``), a file missing, extra or modified, an unsafe
            payload, an unknown format, or a broken delta chain; the message names the file.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"exported model {path} does not exist or is not a directory")
    links = chain(path)  # verifies every version down to the full export
    for link in links:
        fmt = (link.desc.get("format"), link.desc.get("format_version"))
        if fmt != (FORMAT, FORMAT_VERSION):
            raise ExportError(
                f"{link.path}: format {fmt[0]!r} v{fmt[1]} is not {FORMAT!r} v{FORMAT_VERSION}; "
                "load it with a matching metarec version"
            )
    desc, sums = links[-1].desc, links[-1].sums
    spec = read_json(path / FEATURES_FILE)
    layout = layout_of(spec)
    index = desc["tensors"]
    tables = materialize(links, mmap=mmap)
    maps = materialize_id_maps(links)
    params = {
        name: torch.from_numpy(np.array(load_array(path / f, index[f])))
        for name, f in desc["dense_params"].items()
    }
    embeddings = TableEmbeddings(
        tables["emb"], tables.get("linear"), layout, IdMaps(layout, maps) if maps else None
    )
    net = build_model(build(ModelConfig, desc["model"]), layout, embeddings)
    missing, unexpected = net.load_state_dict(params, strict=False)
    if missing or unexpected:
        raise ExportError(
            f"{path}: the dense parameters do not fit the model (missing {missing}, unexpected "
            f"{unexpected}); re-export the model"
        )
    net.eval()
    metrics = read_json(path / METRICS_FILE) if METRICS_FILE in sums else None
    model = ExportedModel(
        path=path,
        name=desc["name"],
        version=path.name,
        model=net,
        layout=layout,
        adaptation=build(MetaConfig, desc["adaptation"]),
        spec=spec,
        lineage=read_json(path / LINEAGE_FILE),
        metrics=metrics,
        descriptor=desc,
    )
    info = desc.get("graph")
    if graph and info:
        saved, here = info["torch"].split(".")[:2], torch.__version__.split(".")[:2]
        if saved != here:
            log.warning("%s: graph exported with torch %s, this is %s; scoring with the rebuilt "
                        "model", path, info["torch"], torch.__version__)  # fmt: skip
        else:
            model.graph = load_graph(path / GRAPH_FILE, sums[GRAPH_FILE])
            _check_graph(model)
    return model
