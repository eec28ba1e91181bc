"""What can go wrong when writing to a warehouse, as one hierarchy rooted at `WarehouseError`."""

from __future__ import annotations

from collections.abc import Iterable


class WarehouseError(Exception):
    """Base class of every error raised by `connectors.warehouse`."""


class UnsupportedWarehouse(WarehouseError):
    """The target is neither a DuckDB path (or ``duckdb:///path``) nor a ``postgresql://`` DSN."""


class FrameContractError(WarehouseError):
    """An entity frame does not follow the frame contract of `connectors.tables`."""

    def __init__(self, table: str, problem: str) -> None:
        super().__init__(f"{table}: {problem}")
        self.table = table
        self.problem = problem


class TableNotFound(WarehouseError):
    """A table was named by string but has never been created with `ensure_table`."""


class WarehouseBusy(WarehouseError):
    """Another holder (a run in this or another process) holds the named exclusive section."""


class TransactionStateError(WarehouseError):
    """A call that needs its own transaction was made inside one, or the reverse."""


class JournalError(WarehouseError):
    """The CDC journal refused a transition."""


class UnknownProcessIds(JournalError):
    """Process ids were loaded or acked without having been journalled as reserved first (DESIGN §3.2)."""

    def __init__(self, portal: str, process_ids: Iterable[str]) -> None:
        self.portal = portal
        self.process_ids = tuple(sorted(process_ids))
        shown = ", ".join(self.process_ids[:5]) + (" ..." if len(self.process_ids) > 5 else "")
        super().__init__(f"{portal}: {len(self.process_ids)} process id(s) not reserved in the journal: "
                         f"{shown}")


class SnapshotError(WarehouseError):
    """The read-only snapshot could not be published."""
