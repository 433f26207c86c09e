"""``python -m components.demo`` (``make demo``): the whole product on one machine, end to end.

``settings.py`` (sizes, presets, output layout), ``stages.py`` (progress and the rerun policy),
``training.py`` (the two torchrun jobs), ``evaluation.py`` (per-task cold-start AUC of the
exports), ``scoring.py`` (raw events of cold campaigns, scored with adaptation), ``flow.py``
(the stages in order), ``summary.py`` (numbers read back from the artefacts, the printed table),
``__main__.py`` (the command line). The HTML report is :mod:`components.report`.
"""
