"""KFP v2 lightweight components of the training pipeline, one per file.

Each component is a thin shell: it decodes the run spec (``components.steps.spec``), calls one
step function of ``components.steps`` and turns the step's result into typed artifacts. Heavy
imports live inside the function bodies; ``install_kfp_package=False`` and no
``packages_to_install``: the images already hold metarec and its dependencies, so nothing is
pip-installed at task time (which also lets ``kfp.local`` run them in this virtualenv).

Artifacts that stand for data on the shared volume (the episodes, a checkpoint, an exported
model) are small JSON files naming that data (its path and content hash) with the same facts in
the artifact's metadata: the data itself stays under the run root, keyed by interval, so that
Airflow and KFP runs of the same interval share it and reruns stay idempotent.
"""

COMPONENTS_IMAGE = "metarec-components:0.1.0"
"""Spark 4, Java 17, metarec[spark,dq,kfp] (``components/Dockerfile``): the Spark and
great-expectations steps, and the light ones that need neither torch nor Spark (resolve_run,
gate, promote, report: a smaller image than the trainer's, already on the CPU nodes)."""
TRAINER_IMAGE = "metarec-trainer:0.1.0"
"""torch + metarec[trainer,kfp] and ``manifests/`` (``trainer/Dockerfile``): the steps that need
torch (train, export_model, evaluate) and the Kubernetes launcher of the training job."""
