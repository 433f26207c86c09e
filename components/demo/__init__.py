"""``python -m components.demo`` (``make demo``): the whole product on one machine, end to end.

The demo calls the step functions of :mod:`components.steps` (those the ``continuous_delivery``
DAG and the KFP pipeline call) and adds only its own data, a plain baseline, its printing and its
report: ``settings.py`` (sizes, presets, the delivery configs), ``flow.py`` (the stages in order),
``progress.py`` (progress lines, the training output relay, the demo stages' records),
``evaluation.py`` (per-task cold-start AUC of the exports), ``scoring.py`` (raw events of cold
campaigns, scored with adaptation), ``delivery.py`` (the last hour through the Airflow DAG),
``summary.py`` (numbers read back from the artefacts, the printed table), ``__main__.py`` (the
command line). The HTML report is :mod:`components.report`.
"""
