"""Serving side of a trained model: export, verified loading, scoring and evaluation.

    from trainer.serving import export_checkpoint, load_exported
    result = export_checkpoint("out/train/run", "out/models")          # out/models/click-dlrm/v1
    model = load_exported(result.path)                                 # checksums first, no pickle
    logits = score_samples(model, sparse, dense)                       # trainer.serving.scoring

- ``artifact.py``: the directory layout, ``CHECKSUMS``, atomic versioned publication (stdlib only,
  so the promotion gate can verify an export without torch);
- ``tensors.py``: ``.npy`` tensors and the ``torch.export`` graph, read without pickle;
- ``export.py``: checkpoint (one rank or sharded) -> versioned model directory;
- ``model.py``: :func:`load_exported` and :class:`ExportedModel` (graph + rebuilt model);
- ``scoring.py``: encoded samples -> logits, optionally adapted to their task's support set;
- ``evaluation.py``: metrics on ETL episodes, the same as the trainer's evaluation.

Everything here needs only torch, numpy, pyarrow and the standard library (the trainer image).
Imports are lazy so that ``trainer.serving.artifact`` stays importable without torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ExportError": "trainer.serving.artifact",
    "verify_checksums": "trainer.serving.artifact",
    "export_checkpoint": "trainer.serving.export",
    "ExportResult": "trainer.serving.export",
    "load_exported": "trainer.serving.model",
    "ExportedModel": "trainer.serving.model",
    "score_samples": "trainer.serving.scoring",
    "score_tasks": "trainer.serving.scoring",
    "SupportSet": "trainer.serving.scoring",
    "evaluate_exported": "trainer.serving.evaluation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
