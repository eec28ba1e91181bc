"""`python -m connectors.sync.purge`: delete everything the warehouse holds for one portal, on purpose.

An uninstalled portal (ONAPPUNINSTALL) stops syncing, and its data stays: analysts may still need it,
and Bitrix24 lets an administrator install the app again. Only this command removes it: every row
keyed by the portal in the entity tables, their histories, the dimensions, the journal and the
ledgers, in one transaction. Without ``--yes`` it only counts.

    python -m connectors.sync.purge --portal acme.bitrix24.com --warehouse wh.duckdb          # counts
    python -m connectors.sync.purge --portal acme.bitrix24.com --warehouse wh.duckdb --yes    # deletes
"""

from __future__ import annotations

import argparse
import sys

from connectors.warehouse import open_warehouse


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 after counting or purging; 2 when the portal has no rows at all."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--portal", required=True, help="portal key (the Dagster partition)")
    parser.add_argument("--warehouse", required=True, help="DuckDB file or postgresql://...?schema=... URL")
    parser.add_argument("--yes", action="store_true", help="delete (default: only count what would go)")
    args = parser.parse_args(argv)
    with open_warehouse(args.warehouse) as warehouse:
        counts = warehouse.purge_portal(args.portal) if args.yes else warehouse.portal_row_counts(args.portal)
    if not counts:
        print(f"the warehouse holds nothing for {args.portal}", file=sys.stderr)
        return 2
    for table, count in sorted(counts.items()):
        print(f"{table}\t{count}")
    print(f"{'deleted' if args.yes else 'would delete (run with --yes)'}: "
          f"{sum(counts.values())} rows of {args.portal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
