"""What can go wrong in the state store, as one hierarchy rooted at `StateStoreError`."""

from __future__ import annotations


class StateStoreError(Exception):
    """Base class of every error raised by `connectors.state`."""


class UnsupportedStateStore(StateStoreError):
    """The target is neither a SQLite path (or ``sqlite:///path``) nor a ``postgresql://`` DSN."""


class InvalidPortalKey(StateStoreError, ValueError):
    """A portal key that is not hostname-like (it becomes a Dagster partition key and a file name)."""


class LockTimeout(StateStoreError):
    """Another process held a portal's refresh lock for longer than the caller would wait."""
