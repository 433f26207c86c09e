"""Roll the champion back to the previous one (the version promoted before it).

Replaces the CHAMPION pointer in one step and appends the rollback to HISTORY.jsonl. Repeated
rollbacks walk further back through the champions; with none left it refuses.

examples:
  metarec rollback --models out/models --name click-dlrm --reason "CTR dropped after v4"
"""

from __future__ import annotations

import argparse
import json
import sys


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, help="models root (holds <name>/v<N>)")
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--reason", default="", help="note kept in the history")


def run(args: argparse.Namespace) -> int:
    from components.promotion import registry

    before = registry.read_champion(args.models, args.name)
    pointer = registry.rollback(args.models, args.name, reason=args.reason or "manual rollback")
    out = {"champion": pointer.version, "rolled_back": before.version if before else None,
           "stack": pointer.stack}  # fmt: skip
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0
