"""Promote an exported model to champion if the gate says it is better, atomically.

The gate compares the challenger with the current champion on one metric computed on the SAME
evaluation data (their data content hashes must match):

  without --evaluate-on   each export's own eval.json (the training run's evaluation); the two
                          runs must have been evaluated on the same ETL output
  --evaluate-on DIR       both exports are evaluated now on the episodes of DIR (the trainer's
                          evaluation, before/after adaptation), e.g. the newest interval

Verdicts: better (promoted), worse, equal (promoted with --promote-on-equal), no_champion
(promoted), already_champion, different_data, failed_validation (checksums, missing metric),
regressed (better on --metric, but GAUC fell by more than --gauc-tolerance or the calibration
error grew by more than --calibration-tolerance: refused; ``inf`` turns a guard off).
The gate decides while holding the model's lock, against the champion it locked, and the CHAMPION
pointer is replaced in one step under the same lock, then the change appended to HISTORY.jsonl:
two concurrent promotions are decided one after the other, the second against the first's
outcome. With --expect the promotion is refused (exit 2) unless that version is the champion.
Exit code: 0 promoted (or nothing to do; with --dry-run: would promote), 1 the gate kept the
champion, 2 an error. If the history cannot be appended after the swap (a full disk), the
promotion stands (exit 0): the output's "warning" and stderr say "promoted ...; history not
recorded: <why>", and the next promotion or rollback writes the record from the pointer.

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
    for guard, what in (("gauc", "GAUC may drop"), ("calibration", "|pred/obs - 1| may grow")):
        parser.add_argument(f"--{guard}-tolerance", type=float, default=None,
                            help=f"{what} by this (default: the gate's; inf: off)")  # fmt: skip
    parser.add_argument("--evaluate-on", default=None, help="ETL output to evaluate both on")
    parser.add_argument("--batch-episodes", type=int, default=64, help="with --evaluate-on")
    parser.add_argument("--max-episodes", type=int, default=0, help="with --evaluate-on (0: all)")
    parser.add_argument("--reason", default="", help="note kept in the history")
    parser.add_argument("--dry-run", action="store_true", help="decide, do not promote")
    parser.add_argument("--status", action="store_true", help="print champion and history only")
    add_expect_argument(parser, "whichever is champion when the lock is taken")


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
    from components.promotion.gate import Decision, GatePolicy, decide, load_candidate
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
    expect = getattr(args, "expect", registry.ANY)
    if expect != registry.ANY and expect != current:  # fail before evaluating; checked again
        raise registry.ChampionChanged(args.name, expect, current, "promotion")  # under the lock
    version = versions[-1] if args.version == "latest" else args.version
    if version not in versions:
        raise ValueError(
            f"{args.name} has no version {version!r} (versions: {', '.join(versions)})"
        )
    guards = {k: v for k in ("gauc_tolerance", "calibration_tolerance")
              if (v := getattr(args, k)) is not None}  # fmt: skip
    policy = GatePolicy(args.metric, args.tolerance, args.promote_on_equal, **guards)
    split = args.metric.split(".")[0]
    evaluate = _evaluate if args.evaluate_on else lambda path, *_: load_candidate(path)
    challenger = evaluate(mdir / version, args, split)
    decided: list[Decision] = []

    def gate(locked: registry.Pointer | None) -> tuple[str, dict[str, Any]] | None:
        """The decision against the champion the registry holds locked (None: no champion)."""
        champion = None
        if locked is not None and locked.version == version:
            champion = challenger
        elif locked is not None:
            champion = evaluate(mdir / locked.version, args, split)
        decided.append(decide(challenger, champion, policy))
        d = decided[-1]
        if not d.promote or args.dry_run:
            return None
        details = {"decision": d.to_dict(), "data_hash": challenger.data_hash,
                   "evaluated_on": args.evaluate_on}  # fmt: skip
        return args.reason or d.reason, details

    if args.dry_run:  # decide against the champion of now; nothing is locked or written
        gate(pointer)
        after = pointer
    else:
        after = registry.promote(args.models, args.name, version, expect=expect, gate=gate)
    decision = decided[-1]
    promoted = bool(decision.promote and not args.dry_run and after and after.version == version)
    out: dict[str, Any] = {"decision": decision.to_dict(), "promoted": promoted,
                           "champion": after.version if after else None}  # fmt: skip
    if promoted and after is not None:
        out["previous"] = after.previous
        if after.history_error:
            out["warning"] = f"promoted {version}; history not recorded: {after.history_error}"
            sys.stderr.write(f"metarec promote: {out['warning']} (the champion pointer holds the "
                             "record; the next promotion or rollback writes it)\n")  # fmt: skip
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0 if decision.promote or decision.verdict == "already_champion" else 1
