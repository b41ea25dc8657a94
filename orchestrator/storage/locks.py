"""Locks that make cap decisions atomic across processes and machines."""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

CAP_LOCK_SPACE = 724300   # first key of PostgreSQL's two-key advisory locks: "caps of customers"
CAP_LOCK_BUCKETS = 256


def lock_customers(conn: Connection, customer_ids: Sequence[str]) -> None:
    """PostgreSQL: serialize cap decisions per customer across planners.

    Customers are hashed into a fixed number of buckets, and the page's buckets are locked in
    ascending order (no deadlock between planners).  A lock per customer would put thousands of
    entries per page into PostgreSQL's shared lock table (64 × max_connections by default): a few
    concurrent planners would run it out of memory.
    """
    if conn.dialect.name != "postgresql":
        return
    conn.execute(
        sa.text(
            "SELECT pg_advisory_xact_lock(:space, b) FROM "
            "(SELECT DISTINCT hashtext(x) & :mask AS b FROM unnest(CAST(:ids AS text[])) AS x ORDER BY b) AS s"
        ),
        {"ids": list(customer_ids), "space": CAP_LOCK_SPACE, "mask": CAP_LOCK_BUCKETS - 1},
    )
