"""Promote an exported model to champion if the gate says it is better, atomically.

The gate compares the challenger with the current champion on one metric computed on the SAME
evaluation data (their data content hashes must match):

  without --evaluate-on   each export's own eval.json (the training run's evaluation); the two
                          runs must have been evaluated on the same ETL output
  --evaluate-on DIR       both exports are evaluated now on the episodes of DIR (the trainer's
                          evaluation, before/after adaptation), e.g. the newest interval

Verdicts: better (promoted), worse, equal (promoted with --promote-on-equal), no_champion
(promoted), already_champion, different_data, failed_validation (checksums, missing metric).
The CHAMPION pointer is replaced in one step and the change appended to HISTORY.jsonl, only if
the champion is still the one the gate compared against (or --expect's): a promotion that raced
with another change is refused (exit 2) instead of overwriting it.
Exit code: 0 promoted (or nothing to do), 1 the gate kept the champion, 2 an error.

examples:
  metarec promote --models out/models --name click-dlrm                  # latest version
  metarec promote --models out/models --name click-dlrm --version v4 \\
      --evaluate-on out/episodes/interval=20261102T00-20261103T00 --metric test_cold.after.auc
  metarec promote --models out/models --name click-dlrm --version v5 --expect v4  # guarded
  metarec promote --models out/models --name click-dlrm --status          # champion + history
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, help="models root (holds <name>/v<N>)")
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--version", default="latest", help="challenger version (default latest)")
    parser.add_argument("--metric", default="test_cold.after.auc", help="gate metric")
    parser.add_argument("--tolerance", type=float, default=0.001, help="equal within this")
    parser.add_argument("--promote-on-equal", action="store_true", help="promote an equal one")
    parser.add_argument("--evaluate-on", default=None, help="ETL output to evaluate both on")
    parser.add_argument("--batch-episodes", type=int, default=64, help="with --evaluate-on")
    parser.add_argument("--max-episodes", type=int, default=0, help="with --evaluate-on (0: all)")
    parser.add_argument("--reason", default="", help="note kept in the history")
    parser.add_argument("--dry-run", action="store_true", help="decide, do not promote")
    parser.add_argument("--status", action="store_true", help="print champion and history only")
    add_expect_argument(parser, "the champion when the command starts")


def add_expect_argument(parser: argparse.ArgumentParser, unset: str) -> None:
    """``--expect VERSION|none``: the compare-and-swap guard of a pointer change; ``unset`` says
    what is expected without it (``args.expect`` is then absent: argparse would run a string
    default through :func:`parse_expect`)."""
    parser.add_argument(
        "--expect",
        type=parse_expect,
        default=argparse.SUPPRESS,
        metavar="VERSION|none",
        help=f"refuse unless this is the champion, 'none' for no champion (default: {unset})",
    )


def parse_expect(text: str) -> str | None:
    """``--expect``: a version name, or ``none`` for "nothing promoted yet"."""
    from trainer.exported.artifact import VERSION_RE

    if text.lower() == "none":
        return None
    if not VERSION_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a version (v<N>) nor 'none'")
    return text


def existing_model(models: str, name: str) -> Path:
    """The folder of model ``name`` under ``models``.

    Raises:
        FileNotFoundError: no such model (no exported version); names the models there.
    """
    from components.promotion import registry
    from trainer.exported.artifact import list_versions

    mdir = registry.model_dir(models, name)
    if list_versions(mdir):
        return mdir
    root = Path(models)
    there = sorted(p.name for p in root.iterdir() if list_versions(p)) if root.is_dir() else []
    raise FileNotFoundError(
        f"{mdir} holds no exported version; run `metarec export` first (models under {root}: "
        f"{', '.join(there) or 'none'})"
    )


def _evaluate(version_dir: Path, args: argparse.Namespace, split: str) -> Any:
    """A gate candidate evaluated on ``--evaluate-on`` (a damaged export fails validation)."""
    from components.promotion.gate import Candidate, load_candidate
    from trainer.exported import ExportError, evaluate_exported, load_exported

    try:
        model = load_exported(version_dir)
    except ExportError as e:
        return Candidate(version_dir.name, None, None, (str(e),))
    evaluation = evaluate_exported(model, args.evaluate_on, (split,), args.batch_episodes,
                                   args.max_episodes)  # fmt: skip
    return load_candidate(version_dir, evaluation)


def run(args: argparse.Namespace) -> int:
    from components.promotion import registry
    from components.promotion.gate import GatePolicy, decide, load_candidate
    from trainer.exported.artifact import list_versions

    mdir = existing_model(args.models, args.name)
    pointer = registry.read_champion(args.models, args.name)
    if args.status:
        status = {"champion": pointer.version if pointer else None,
                  "stack": pointer.stack if pointer else [], "versions": list_versions(mdir),
                  "history": registry.read_history(args.models, args.name)}  # fmt: skip
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
        return 0
    versions = list_versions(mdir)
    current = pointer.version if pointer else None
    expect = getattr(args, "expect", current)
    if expect != current:  # fail before evaluating; the swap checks again under the lock
        raise registry.ChampionChanged(args.name, expect, current, "promotion")
    version = versions[-1] if args.version == "latest" else args.version
    if version not in versions:
        raise ValueError(
            f"{args.name} has no version {version!r} (versions: {', '.join(versions)})"
        )
    policy = GatePolicy(args.metric, args.tolerance, args.promote_on_equal)
    split = args.metric.split(".")[0]
    if args.evaluate_on:
        challenger = _evaluate(mdir / version, args, split)
        champion = None
        if pointer is not None:
            champion = (
                challenger
                if pointer.version == version
                else _evaluate(mdir / pointer.version, args, split)
            )
    else:
        challenger = load_candidate(mdir / version)
        champion = load_candidate(mdir / pointer.version) if pointer else None
    decision = decide(challenger, champion, policy)
    out: dict[str, Any] = {"decision": decision.to_dict(), "promoted": False}
    if decision.promote and not args.dry_run:
        details = {"decision": decision.to_dict(), "data_hash": challenger.data_hash,
                   "evaluated_on": args.evaluate_on}  # fmt: skip
        reason = args.reason or decision.reason
        new = registry.promote(
            args.models, args.name, version, expect=expect, reason=reason, details=details
        )
        out.update(promoted=True, champion=new.version, previous=new.previous)
    else:
        out["champion"] = pointer.version if pointer else None
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0 if decision.promote or decision.verdict == "already_champion" else 1
