"""Train and evaluate a meta-learning CTR/CVR model on one interval of ETL episodes.

    python -m trainer --config debug data.path=out/episodes/dt=2026-11-01
    python -m trainer --config trainer/configs/default.toml data.path=s3://b/ep train.steps=5000
    torchrun --nproc_per_node=2 -m trainer --config default data.path=...   # 2 ranks, sharded rows
    metarec train --nproc 2 --config debug data.path=...                    # the same, via the CLI

On a cluster the container command is ``python -m trainer.supervise -m trainer --config ...``
(torchrun's launch with restartable exit codes, ``trainer/supervise.py``): torchrun takes the
Kubeflow training operator's ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_NPROC_PER_NODE`` and
``PET_MASTER_ADDR``/``PORT`` as its defaults. With ``data.batch_episodes = T`` each of the W ranks
trains on T episodes per step; the embedding rows are sharded over the ranks.

A run is a config file (a TOML path, or the name of a packaged run: debug, default) plus
``section.key=value`` overrides, values written as TOML literals (``train.steps=100``,
``model.mlp=[64,32]``, ``meta.mode=fomaml``). Sections: data, model, meta, optim, parallel, train,
checkpoint, eval (see ``trainer/config.py``: every field is documented there).

Writes to ``train.output_dir`` (rank 0): config.json, sharding_plan.json, metrics.jsonl, eval.json,
report.png, checkpoints/ (one shard per rank). Exit codes: 0 done; 2 a user error (bad config,
missing or mismatched data, unusable checkpoint), reported as one line (``-v`` shows the
traceback); any other error is raised, and under torchrun recorded with its rank's traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("trainer")


def build_parser(prog: str = "python -m trainer") -> argparse.ArgumentParser:
    """The command line shared by ``python -m trainer`` and ``metarec train``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--print-config`` and the overrides (also used by ``metarec train``)."""
    parser.add_argument(
        "--config",
        default=None,
        help="TOML config file, or a packaged run name (debug, default)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as JSON and exit",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="override a config value (TOML literal), e.g. train.steps=100 meta.mode=fomaml",
    )


def run(args: argparse.Namespace) -> int:
    """Load the config, join the job, train, evaluate and write the report; user errors
    propagate (see :func:`execute`). The process group is left in a ``finally``."""
    from trainer.config import load_trainer_config
    from trainer.context import context_from_env
    from trainer.logging_utils import setup_logging
    from trainer.parallel.env import LaunchSpec

    setup_logging(LaunchSpec.from_environ().rank, getattr(args, "verbose", False))
    cfg = load_trainer_config(args.config, list(args.overrides))
    if args.print_config:
        sys.stdout.write(json.dumps(cfg.to_dict(), indent=2) + "\n")
        return 0

    from trainer.report import write_report
    from trainer.trainer import Trainer

    env = context_from_env(cfg)
    try:
        trainer = Trainer(cfg, env)
        try:
            trainer.build()
            trainer.fit()
        finally:
            trainer.close()
    finally:
        env.close()
    if env.is_main:
        log.info("report: %s", write_report(cfg.train.output_dir))
    return 0


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_intermixed_args(argv)  # options may follow overrides
    except SystemExit as e:  # --help, or a malformed command line
        return int(e.code or 0)
    return execute(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 user error). Wrapped in torchelastic's
    ``record``: under torchrun an uncaught error is written to the rank's error file, so torchrun
    reports it (rank, traceback) as the root cause of the job's failure."""
    # Imported here, not at the top: `metarec train --help` imports this module and stays fast.
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_main)(argv)


def execute(args: argparse.Namespace, prog: str = "trainer") -> int:
    """:func:`run` with user errors turned into one line ``<prog>: error: ...`` on stderr and
    exit code 2."""
    from trainer.checkpoint import CheckpointError

    try:
        return run(args)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        if args.verbose:
            raise
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
