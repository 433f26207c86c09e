"""Roll the champion back to the previous one (the version promoted before it).

Replaces the CHAMPION pointer in one step and appends the rollback to HISTORY.jsonl. Repeated
rollbacks walk further back through the champions; with none left it refuses. With --expect the
rollback happens only if that version is still the champion, so a scripted retry of a rollback
that went through is refused (exit 2) instead of rolling back a second time.

examples:
  metarec rollback --models out/models --name click-dlrm --reason "CTR dropped after v4"
  metarec rollback --models out/models --name click-dlrm --expect v4   # only if v4 serves
"""

from __future__ import annotations

import argparse
import json
import sys


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from components.promotion.promote_command import add_expect_argument

    parser.add_argument("--models", required=True, help="models root (holds <name>/v<N>)")
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--reason", default="", help="note kept in the history")
    add_expect_argument(parser, "whichever is")


def run(args: argparse.Namespace) -> int:
    from components.promotion import registry
    from components.promotion.promote_command import existing_model

    existing_model(args.models, args.name)
    before = registry.read_champion(args.models, args.name)
    pointer = registry.rollback(
        args.models,
        args.name,
        expect=getattr(args, "expect", registry.ANY),
        reason=args.reason or "manual rollback",
    )
    out = {"champion": pointer.version, "rolled_back": before.version if before else None,
           "stack": pointer.stack}  # fmt: skip
    if pointer.history_error:  # the rollback stands: the pointer holds its record
        out["warning"] = f"rolled back to {pointer.version}; history not recorded: " + (
            pointer.history_error
        )
        sys.stderr.write(f"metarec rollback: {out['warning']}\n")
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0
