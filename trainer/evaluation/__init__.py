"""``metarec evaluate``: any checkpoint or exported model on any episode folder and split, beside
the baselines a user would try instead, with metrics that separate ranking from calibration.

    from trainer.evaluation import Settings, evaluate_model, load_model
    model = load_model("out/train/run", "out/episodes/interval=...")    # or an export's v<N>
    result = evaluate_model(model, "out/episodes/interval=...", "test_cold", Settings())

- ``models.py``: a training checkpoint (one rank or sharded) or an export, loaded read-only on
  the CPU and checked against the folder's feature spec;
- ``episodes.py``: a split's episodes read once, and regrouped per task (task-level adaptation);
- ``baselines.py``: the calibration-only baseline (a per-task logit offset);
- ``grid.py``: the rows (no adaptation, calibration only, the training setting, every grid
  cell, the cell tuned on another split) at both levels, and the metrics of each (an ESMM
  model's: of its CTR head, plus CTR, CVR-on-clicks and CTCVR ``heads``);
- ``command.py``: the command line (JSON + a printed table).

Nothing here writes a checkpoint or imports ``torch.distributed``.
"""

from trainer.evaluation.grid import Settings, evaluate_model
from trainer.evaluation.models import EvaluatedModel, load_model

__all__ = ["EvaluatedModel", "Settings", "evaluate_model", "load_model"]
