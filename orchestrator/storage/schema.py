"""Tables, in SQLAlchemy Core: one schema for SQLite and PostgreSQL.

Instants are stored as integer Unix seconds (UTC): portable, compact, sortable, and free of the
time-zone ambiguity that text timestamps invite.  Calendar days are integer day numbers since
1970-01-01 where arithmetic on them is needed (days since the last purchase, in SQL).
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA_VERSION = 5

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True, comment="the external id from the CRM export"),
    sa.Column("name", sa.Text),
    sa.Column("first_name", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("phone", sa.String(20), comment="E.164; NULL when missing or invalid"),
    sa.Column("timezone", sa.String(64)),
    sa.Column("city", sa.Text),
    sa.Column("birthday", sa.Date),
    sa.Column("birth_month", sa.SmallInteger),
    sa.Column("birth_day", sa.SmallInteger),
    sa.Column("manager", sa.String(64)),
    sa.Column("abc_group", sa.String(16)),
    sa.Column("bonus_balance", sa.Float),
    sa.Column("discount_percent", sa.Float),
    sa.Column("consent_email", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("consent_sms", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("consent_phone", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("phone_cap_days", sa.Integer),
    # Withdrawals of consent (link, STOP, manager, CLI) outlive re-imports of the CRM's flags.
    sa.Column("unsubscribed_email", sa.BigInteger),
    sa.Column("unsubscribed_sms", sa.BigInteger),
    sa.Column("unsubscribed_phone", sa.BigInteger),
    sa.Column("phone_invalid", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("attrs", sa.JSON, comment="custom attributes: every other CSV column"),
    sa.Column("zones", sa.Text, comment="candidate IANA zones, space separated"),
    sa.Column("zone_source", sa.String(16), comment="column | city | phone | default"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

custom_attributes = sa.Table(
    "custom_attributes",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True,
              comment="every extra CSV column seen on import: the fields segments may use"),
)

purchases = sa.Table(
    "purchases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(128), nullable=False, unique=True,
              comment="the export's purchase id, or a digest of customer, date, amount, category"),
    sa.Column("customer_id", sa.String(64), nullable=False, index=True),
    sa.Column("date", sa.Date, nullable=False),
    sa.Column("day", sa.Integer, nullable=False, comment="days since 1970-01-01"),
    sa.Column("month", sa.SmallInteger, nullable=False),
    sa.Column("amount", sa.Float, nullable=False),
    sa.Column("category", sa.Text),
)

SEASON_COLUMNS = tuple(f"season_{month:02d}" for month in range(1, 13))

customer_stats = sa.Table(
    "customer_stats",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("purchases_count", sa.Integer, nullable=False),
    sa.Column("total_spent", sa.Float, nullable=False),
    sa.Column("first_purchase_day", sa.Integer),
    sa.Column("last_purchase_day", sa.Integer),
    sa.Column("last_purchase_at", sa.Date),
    sa.Column("avg_purchase_interval_days", sa.Float),
    sa.Column("preferred_category", sa.Text),
    # Season-corrected sleep score (docs/SLEEP_SCORE.md): the client's activity per calendar
    # month, the "seasonal clock" at the last purchase, and the usual gap on that clock.
    *(sa.Column(name, sa.Float) for name in SEASON_COLUMNS),
    sa.Column("clock_last", sa.Float),
    sa.Column("usual_gap", sa.Float),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("campaign", sa.String(128), nullable=False),
    sa.Column("fire_at", sa.BigInteger, nullable=False, comment="the scheduled fire time (UTC)"),
    sa.Column("status", sa.String(16), nullable=False, comment="planning | planned | failed"),
    sa.Column("started_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger),
    sa.Column("summary", sa.JSON),
    sa.UniqueConstraint("campaign", "fire_at", name="uq_runs_identity"),
)

DELIVERY_STATES = (
    "planned", "queued", "sending", "sent", "failed", "unknown", "suppressed", "cancelled",
)
# Rows that count against frequency caps: whatever may reach, or has reached, the customer.
CAP_COUNTED_STATES = ("planned", "queued", "sending", "sent", "unknown")

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("campaign", sa.String(128), nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("category", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("detail", sa.Text),
    sa.Column("send_at", sa.BigInteger, comment="when it may go out (UTC)"),
    sa.Column("expires_at", sa.BigInteger, comment="not sent by then: expired"),
    sa.Column("sent_at", sa.BigInteger),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("provider_id", sa.Text),
    sa.Column("zone", sa.String(64)),
    sa.Column("zone_source", sa.String(16)),
    sa.Column("payload", sa.JSON, comment="the rendered message"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("run_id", "customer_id", "channel", name="uq_deliveries_once"),
    sa.Index("ix_deliveries_caps", "customer_id", "channel", "send_at"),
    sa.Index("ix_deliveries_due", "status", "send_at"),
)

TASK_STATES = ("open", "done", "closed")

call_tasks = sa.Table(
    "call_tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.Integer, nullable=False, unique=True,
              comment="the ledger row that created it: one task per delivery, ever"),
    sa.Column("campaign", sa.String(128), nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("manager", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, comment="open | done | closed"),
    sa.Column("due_from", sa.BigInteger, nullable=False),
    sa.Column("due_until", sa.BigInteger, nullable=False),
    sa.Column("zone", sa.String(64), nullable=False),
    sa.Column("zone_source", sa.String(16)),
    sa.Column("script", sa.Text),
    sa.Column("offer", sa.JSON),
    sa.Column("card", sa.JSON, comment="the customer's card when the task was made"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("outcome", sa.String(16)),
    sa.Column("note", sa.Text, comment="the note of the latest outcome"),
    sa.Column("history", sa.JSON, comment="every outcome and closing, oldest first (orchestrator.tasks)"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index("ix_call_tasks_manager", "manager", "status", "due_from"),
)

# The SMS gateway's delivery-status hook finds a row by the provider's message id (web app).  Partial:
# rows without a provider id (every planned row) cost the planner's inserts nothing.
deliveries_provider_index = sa.Index(
    "ix_deliveries_provider", deliveries.c.provider_id,
    sqlite_where=deliveries.c.provider_id.isnot(None), postgresql_where=deliveries.c.provider_id.isnot(None),
)

# The pump's sweep of rows past their window (`planned`, expires_at <= now) reads this, not every
# planned row: with a backlog of a million due rows the sweep was a scan of the ledger every pass
# (docs/LOAD.md).  Partial: a row that moves on from `planned` adds no entry.
deliveries_expiry_index = sa.Index(
    "ix_deliveries_expiry", deliveries.c.expires_at,
    sqlite_where=deliveries.c.status == "planned", postgresql_where=deliveries.c.status == "planned",
)

# The SMS gateway's inbound hook finds who sent STOP by phone: without this, a scan of every customer
# per message (50 ms of a parallel scan at a million customers, docs/LOAD.md).
customers_phone_index = sa.Index("ix_customers_phone", customers.c.phone)

USER_ROLES = ("marketer", "manager")

users = sa.Table(
    "users",
    metadata,
    sa.Column("login", sa.String(64), primary_key=True,
              comment="a manager's login is the customers' and call tasks' `manager` value"),
    sa.Column("name", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("role", sa.String(16), nullable=False, comment="marketer | manager"),
    sa.Column("password_hash", sa.Text, nullable=False,
              comment="scrypt$N$r$p$salt$hash (hashlib.scrypt, per-user salt, base64)"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)
