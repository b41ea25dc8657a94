"""Durable storage: customers, purchases, derived statistics, runs and the delivery ledger."""

from orchestrator.storage.engine import connect, write_transaction
from orchestrator.storage.schema import metadata

__all__ = ["connect", "metadata", "write_transaction"]
