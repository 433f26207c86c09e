"""The exported model: writing it from a checkpoint (in full or as a delta on the previous
version), loading it verified, scoring and evaluating with it (the KServe model server,
``components/serve``, serves these exports).

    from trainer.exported import export_checkpoint, load_exported
    result = export_checkpoint("out/train/run", "out/models")          # out/models/click-dlrm/v1
    model = load_exported(result.path)                                 # checksums first, no pickle
    logits = score_samples(model, sparse, dense)                       # trainer.exported.scoring

- ``artifact.py``: the directory layout, ``CHECKSUMS``, atomic versioned publication (stdlib only,
  so the promotion gate can verify an export without torch);
- ``tensors.py``: ``.npy`` tensors and the ``torch.export`` graph, read without pickle;
- ``export.py``: checkpoint (one rank or sharded) -> versioned model directory;
- ``delta.py``: delta exports (the rows changed since the base version) and their chains;
- ``id_maps.py``: dynamic tables' id -> row maps (written, read, applied to ids when scoring);
- ``model.py``: :func:`load_exported` and :class:`ExportedModel` (graph + rebuilt model);
- ``scoring.py``: encoded samples -> logits, optionally adapted to their task's support set;
- ``adaptation.py``: one task adapted once, then any candidates scored with it (server cache);
- ``evaluation.py``: metrics on ETL episodes, the same as the trainer's evaluation.

Everything here needs only torch, numpy, pyarrow and the standard library (the trainer image).
Imports are lazy so that ``trainer.exported.artifact`` stays importable without torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ExportError": "trainer.exported.artifact",
    "verify_checksums": "trainer.exported.artifact",
    "export_checkpoint": "trainer.exported.export",
    "ExportResult": "trainer.exported.export",
    "load_exported": "trainer.exported.model",
    "ExportedModel": "trainer.exported.model",
    "score_samples": "trainer.exported.scoring",
    "score_tasks": "trainer.exported.scoring",
    "SupportSet": "trainer.exported.scoring",
    "evaluate_exported": "trainer.exported.evaluation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
