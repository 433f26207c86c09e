"""Kubeflow Pipelines (KFP v2) definitions of the metarec training flow."""
