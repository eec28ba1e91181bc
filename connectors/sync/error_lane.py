"""`python -m connectors.sync.error_lane`: see and discard what a portal keeps in the error lane.

A message leaves the lane only when its object loads or when an operator gives it up on purpose
(DESIGN §3 step 7). ``discard`` records who and why in the warehouse's ``_error_lane`` ledger; the
next error-lane drain (``drain_error_lanes``, or ``drain_error_lane`` for one portal) then
acknowledges the row without loading it. A later change of the same object is a newer occurrence
and is loaded as usual.

    python -m connectors.sync.error_lane list --portal acme.bitrix24.com --warehouse wh.duckdb
    python -m connectors.sync.error_lane discard --portal acme.bitrix24.com --warehouse wh.duckdb \\
        --message-id 3f2c... --by alice@example.com --reason "deal 42 is corrupt in Bitrix24"
"""

from __future__ import annotations

import argparse
import json
import sys

from connectors.warehouse import ParkedStatus, open_warehouse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("list", "discard"):
        sub = commands.add_parser(name)
        sub.add_argument("--portal", required=True, help="portal key (the Dagster partition)")
        sub.add_argument("--warehouse", required=True, help="DuckDB file or postgresql:// DSN")
        sub.add_argument("--schema", default="bitrix24", help="PostgreSQL schema")
        if name == "list":
            sub.add_argument("--status", choices=[s.value for s in ParkedStatus], default="parked")
        else:
            sub.add_argument("--message-id", action="append", required=True, dest="message_ids")
            sub.add_argument("--by", required=True, help="who discards (recorded)")
            sub.add_argument("--reason", required=True, help="why (recorded)")
    args = parser.parse_args(argv)
    with open_warehouse(args.warehouse, schema=args.schema) as warehouse:
        if args.command == "list":
            for entry in warehouse.error_lane(args.portal, ParkedStatus(args.status)):
                print(json.dumps({"message_id": entry.message_id, "event": entry.event_name,
                                  "kind": entry.entity_kind, "id": entry.entity_id, "attempts": entry.attempts,
                                  "last_failed_at": entry.last_failed_at.isoformat(),
                                  "last_error": entry.last_error}))
            return 0
        parked = {entry.message_id for entry in warehouse.error_lane(args.portal)}
        unknown = sorted(set(args.message_ids) - parked)
        if unknown:
            print(f"not parked in the error lane of {args.portal}: {', '.join(unknown)}", file=sys.stderr)
            return 2
        count = warehouse.discard(args.portal, args.message_ids, by=args.by, reason=args.reason)
        print(f"discarded {count} message(s); the next error-lane drain acknowledges them")
        return 0


if __name__ == "__main__":
    sys.exit(main())
