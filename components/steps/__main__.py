"""Run delivery steps from the command line (the same functions the DAGs and the pipeline call).

    python -m components.steps deliver --interval 2026-11-01T00/1h           # every step
    python -m components.steps deliver --interval 2026-11-01T00/2026-11-01T03 --each 1h  # backfill
    python -m components.steps check-raw --interval 2026-11-01T00/1h
    python -m components.steps status                                        # champion + history
    python -m components.steps rollback --reason "bad CTR after v7"

The config comes from --config or $METAREC_DELIVERY_CONFIG (``components/steps/config.py``).
The single steps also exist as ``metarec`` subcommands (validate, etl, train, export, promote,
rollback) for ad-hoc use outside a run root.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import timedelta


def build_parser() -> argparse.ArgumentParser:
    from components.promotion.promote_command import add_expect_argument

    parser = argparse.ArgumentParser(
        prog="python -m components.steps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", help="delivery config (TOML/JSON); default $METAREC_DELIVERY_CONFIG"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("deliver", "check-raw"):
        p = sub.add_parser(name)
        p.add_argument("--interval", required=True, help="START/END or START/DURATION (UTC hours)")
        if name == "deliver":
            p.add_argument(
                "--each", default=None, help="split into intervals of this length (1h, 1d)"
            )
            p.add_argument(
                "--force", action="store_true", help="recompute instead of reusing records"
            )
    sub.add_parser("status")
    rb = sub.add_parser("rollback")
    rb.add_argument("--reason", default="manual rollback")
    add_expect_argument(rb, "whichever is")
    return parser


def _intervals(text: str, each: str | None):
    from components.steps.layout import Interval

    whole = Interval.parse(text)
    if not each:
        return [whole]
    unit = {"h": 1, "d": 24}.get(each[-1:])
    if unit is None or not each[:-1].isdigit() or int(each[:-1]) < 1:
        raise ValueError(f"--each {each!r}: use e.g. 1h or 1d")
    step = timedelta(hours=int(each[:-1]) * unit)
    out, t = [], whole.start
    while t < whole.end:
        out.append(Interval(t, min(t + step, whole.end)))
        t += step
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from components.steps import data, delivery, flow
    from components.steps.config import load_delivery_config

    try:
        cfg = load_delivery_config(args.config)
        if args.command == "check-raw":
            status = data.check_raw(cfg, _intervals(args.interval, None)[0])
            print(json.dumps(status.__dict__, indent=2))
            return 0 if status.ready else 1
        if args.command == "status":
            print(json.dumps(delivery.champion_status(cfg), indent=2))
            return 0
        if args.command == "rollback":
            from components.promotion.registry import ANY

            expect = getattr(args, "expect", ANY)
            result = delivery.rollback_step(cfg, args.reason, expect=expect)
            print(json.dumps(result.to_dict(), indent=2))
            return 0
        for interval in _intervals(args.interval, args.each):  # in order: each warm-starts the next
            out = flow.deliver_interval(cfg, interval, force=args.force)
            print(
                json.dumps(
                    {
                        "interval": interval.id,
                        "gate": out["gate"]["verdict"],
                        "champion": out["promote"]["champion"],
                        "report": out["report"],
                    }
                )
            )
        return 0
    except (ValueError, FileNotFoundError) as e:
        if args.verbose:
            raise
        sys.stderr.write(f"components.steps {args.command}: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
