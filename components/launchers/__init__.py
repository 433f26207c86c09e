"""Launchers: where a pipeline step runs. The step code is the same everywhere; only this differs.

- :mod:`.local` — child processes on this machine: ``torchrun -m trainer`` and Spark ``local[*]``.
- :mod:`.render` / :mod:`.render_etl` — a run's Kubernetes objects from ``manifests/`` plus its
  parameters, rendered by kustomize itself (:mod:`.kustomize`: ``kubectl kustomize``).
- :mod:`.local_spark` — a rendered SparkApplication as its driver's ``spark-submit`` on this
  machine (the SparkApplication's contract test).
- :mod:`.kubernetes` — create them with the Kubernetes API, follow the job, stream its logs,
  clean up; the API client is injected.
- :mod:`.checks` — the operators' admission rules, checked before submitting.
- :mod:`.local_cluster` — a rendered job as local processes with the operator's environment
  (the manifests' contract test; a cluster-free smoke test).
- :mod:`.backend` — ``metarec train --backend {local,kubernetes} [--dry-run]``.

Used by the CLI, the Airflow DAGs and the KFP components alike.
"""
