"""``metarec train --backend kubernetes``: the two hooks ``components/train/command.py`` calls.

    # in configure_parser(parser):
    add_backend_arguments(parser)
    # first line of run(args):
    if args.backend == "kubernetes": return run_train_with_backend(args, args.config, args.overrides)

examples:
  metarec train --backend kubernetes --dry-run --k8s-run-id r1 --config default \\
      data.path=/data/episodes/interval=2026110100-2026110200      # prints the manifests
  metarec train --backend kubernetes --k8s-variant trainjob-gpu --k8s-nodes 4 \\
      --k8s-image registry.example.com/metarec-trainer:0.1.0 --k8s-run-id day-2026-11-01 \\
      --config default data.path=/data/episodes/interval=2026110100-2026110200
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.launchers.render import TrainRunParams

log = logging.getLogger(__name__)
BACKENDS = ("local", "kubernetes")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--dry-run`` and the ``--k8s-*`` options (argparse only: fast ``--help``)."""
    where = parser.add_argument_group("backend")
    where.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="local: this machine (default); kubernetes: a PyTorchJob/TrainJob from manifests/",
    )
    where.add_argument(
        "--dry-run",
        action="store_true",
        help="kubernetes: print the objects that would be created (YAML) and exit",
    )
    k8s = parser.add_argument_group("kubernetes backend")
    k8s.add_argument("--k8s-variant", default="pytorchjob-gpu", metavar="OVERLAY",
                     help="overlay of manifests/overlays (pytorchjob-gpu, pytorchjob-cpu, "
                          "pytorchjob-elastic, trainjob-gpu, ...; default pytorchjob-gpu)")  # fmt: skip
    k8s.add_argument("--k8s-namespace", default="metarec", metavar="NS")
    k8s.add_argument("--k8s-run-id", default=None, metavar="ID",
                     help="names the job metarec-train-<ID>; give a stable one per pipeline run "
                          "so a retry re-attaches (default: r<UTC time>)")  # fmt: skip
    k8s.add_argument(
        "--k8s-image",
        default=None,
        metavar="IMAGE",
        help="trainer image, e.g. registry.example.com/metarec-trainer:0.1.0",
    )
    k8s.add_argument("--k8s-nodes", type=int, default=None, metavar="N", help="pods of the job")
    k8s.add_argument(
        "--k8s-nproc-per-node", type=int, default=None, metavar="N", help="ranks per pod"
    )
    k8s.add_argument(
        "--k8s-gpus-per-node",
        type=int,
        default=None,
        metavar="N",
        help="nvidia.com/gpu per pod (0: none)",
    )
    k8s.add_argument(
        "--k8s-timeout",
        type=float,
        default=24 * 3600.0,
        metavar="S",
        help="give up (and stop the job) after this many seconds (default 1 day)",
    )
    k8s.add_argument("--k8s-cleanup", choices=("on-success", "always", "never"),
                     default="on-success",
                     help="delete the job when done: on-success (default; a failed job is kept "
                          "for inspection), always, never")  # fmt: skip


def _config_text(config: str | None) -> str | None:
    if config is None:
        return None
    from trainer.config import resolve_config_path

    return resolve_config_path(config).read_text()


def _check_config(config: str | None, overrides: Sequence[str]) -> None:
    """Refuse a bad config or override here, not minutes later in a pod."""
    from trainer.config import load_trainer_config

    extra = [] if any(o.startswith("data.path=") for o in overrides) else ["data.path=/unset"]
    load_trainer_config(config, [*overrides, *extra])


def build_params(
    args: argparse.Namespace, config: str | None, overrides: Sequence[str]
) -> TrainRunParams:
    """The :class:`~components.launchers.render.TrainRunParams` of a command line."""
    from components.launchers.render import TrainRunParams

    run_id = args.k8s_run_id or datetime.now(UTC).strftime("r%Y%m%d-%H%M%S")
    return TrainRunParams(
        run_id=run_id,
        variant=args.k8s_variant,
        namespace=args.k8s_namespace,
        image=args.k8s_image,
        config_toml=_config_text(config),
        overrides=tuple(overrides),
        nodes=args.k8s_nodes,
        nproc_per_node=args.k8s_nproc_per_node,
        gpus_per_node=args.k8s_gpus_per_node,
    )


def kubernetes_apis() -> tuple[Any, Any]:  # pragma: no cover - needs a cluster
    """The ``CustomObjectsApi`` and ``CoreV1Api`` of the cluster: in-cluster config inside a pod,
    else ``~/.kube/config``."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi(), client.CoreV1Api()


def run_train_with_backend(
    args: argparse.Namespace, config_path: str | None, overrides: Sequence[str]
) -> int:
    """Run ``metarec train`` on ``args.backend``; returns the exit code.

    kubernetes: render the run from ``manifests/`` (``--dry-run``: print it and return 0), create
    it, stream its logs and wait; 1 when the job failed, timed out or was deleted (one line on
    stderr says which and how to inspect it). local: the local launcher (torchrun for --nproc > 1).

    Raises:
        ValueError / FileNotFoundError: a bad config, override or parameter (the CLI prints it).
    """
    from components.launchers.local import LaunchError, train_locally

    overrides = list(overrides)
    _check_config(config_path, overrides)
    if args.backend == "local":
        try:
            train_locally(config_path, overrides, getattr(args, "nproc", 1), verbose=args.verbose)
        except LaunchError as e:
            sys.stderr.write(f"metarec train: error: {e}\n")
            return e.code
        return 0
    from components.launchers.checks import require_valid
    from components.launchers.render import render_run, to_yaml

    objs = render_run(build_params(args, config_path, overrides))
    require_valid(objs)
    if args.dry_run:
        sys.stdout.write(to_yaml(objs))
        return 0
    from components.launchers.kubernetes import JobError, KubernetesLauncher

    custom, core = kubernetes_apis()
    launcher = KubernetesLauncher(custom, core, cleanup=args.k8s_cleanup)
    try:
        outcome = launcher.run(objs, timeout_s=args.k8s_timeout)
    except JobError as e:
        sys.stderr.write(f"metarec train: error: {e}\n")
        return 1
    log.info("%s %s/%s succeeded in %.0f s", outcome.kind, outcome.namespace, outcome.name,
             outcome.seconds)  # fmt: skip
    return 0
