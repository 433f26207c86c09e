"""``metarec``: the command line of the pipeline.

Each subcommand lives in its own module, which defines ``configure_parser(parser)`` and
``run(args) -> int``; the module is imported only when its subcommand runs, so ``metarec --help``
is instant and a Spark-free machine can still train.

    metarec generate --rows 100000 --out data/raw          # synthetic ad logs
    metarec adapt movielens --src ../shared/data/movielens-100k/original --out data/raw-ml
    metarec etl --input data/raw --output data/episodes      # Spark Meta-IO offline stage
    metarec validate data/episodes/<interval>                # great-expectations gate
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys

# name -> (module, one-line help). Order is the order of the pipeline.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (
        "components.generate.command",
        "write synthetic ad logs (Zipf traffic, cold-start campaigns, corruption)",
    ),
    "adapt": (
        "components.adapters.command",
        "map a public dataset (MovieLens, Taobao, Ali-CCP) onto the raw ad-log schema",
    ),
    "etl": (
        "components.etl.command",
        "Spark Meta-IO stage: raw logs -> validated, task-partitioned episodes",
    ),
    "validate": (
        "components.validation.command",
        "check raw logs or episodes with great-expectations (fails closed)",
    ),
    "plan": (
        "trainer.plan_cli",
        "per-rank memory and bytes per collective of a run at a world size (no run)",
    ),
    "train": ("components.train.command", "meta-train and evaluate a CTR/CVR model on episodes"),
    "export": ("components.export.command", "checkpoint -> versioned, checksummed model directory"),
    "evaluate": (
        "trainer.evaluation.command",
        "a checkpoint or export on any episodes: adaptation grid, baselines, ranking + calibration",
    ),
    "score": ("components.score.command", "score raw events with an exported model (+ adaptation)"),
    "promote": ("components.promotion.promote_command", "gate a challenger, promote it atomically"),
    "rollback": ("components.promotion.rollback_command", "roll back to the previous champion"),
}


def _top_level_help() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return (
        "usage: metarec <command> [options]\n\n"
        "metarec: meta-learning CTR/CVR training pipeline for ad logs.\n\n"
        "commands:\n" + "\n".join(lines) + "\n\n"
        "Run `metarec <command> --help` for the options of a command; `metarec --version`.\n"
    )


def _version() -> str:
    """The installed distribution's version (``importlib.metadata``: no package import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metarec")
    except PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .`)"


def _unknown_command(name: str) -> str:
    """The error for a mistyped command, with the closest command names as suggestions."""
    close = difflib.get_close_matches(name, COMMANDS, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"metarec: unknown command {name!r}{hint}\n\n{_top_level_help()}"


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options may come before, between or after the positionals, as in
    ``metarec train data.path=X --nproc 2 train.steps=5`` (intermixed parsing; plain
    ``parse_args`` stops the overrides at the first option). argparse cannot intermix a command
    that has sub-commands (``adapt``, ``validate``); those take no list of positionals."""
    if parser._subparsers is not None:  # set by add_subparsers
        return parser.parse_args(argv)
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``metarec`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(_top_level_help())
        return 0
    if argv[0] == "--version":
        sys.stdout.write(f"metarec {_version()}\n")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(_unknown_command(name))
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"metarec {name}",
        description=(module.__doc__ or help_).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.configure_parser(parser)
    args = _parse(parser, rest)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        # User errors: one readable line, no traceback (use -v for it).
        if args.verbose:
            raise
        sys.stderr.write(f"metarec {name}: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
