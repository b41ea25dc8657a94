"""The planner: a campaign run, streamed from the segment into decisions and ledger rows.

Data flows one way: segment pages (storage) → policy decisions (pure) → rendering → ledger rows in
batches.  Nothing per recipient goes through the broker or a network round trip of its own: one
query per page reads the customers, one reads their contact history, one executemany writes the
rows.  Cap reservations are made atomic by deciding and writing each page inside one write
transaction that holds a lock on the page's customers (SQLite: the database write lock taken by
BEGIN IMMEDIATE; PostgreSQL: transaction-scoped advisory locks per customer, taken in a global
order so that concurrent planners never deadlock).
"""

from __future__ import annotations

import json
import operator
import time as clock
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property, lru_cache
from typing import Any, Callable, Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orchestrator.campaigns import Campaign, CampaignFile
from orchestrator.errors import NotFound, TemplateError
from orchestrator.gc_tuning import bulk_work
from orchestrator.links import cabinet_link, unsubscribe_link
from orchestrator.policy.caps import Sent, longest_window
from orchestrator.policy.consent import recipient_of
from orchestrator.policy.decide import Decision, DecisionCache, PolicyContext, Rules
from orchestrator.settings import Settings
from orchestrator.storage.engine import is_sqlite, write_transaction
from orchestrator.storage.locks import lock_customers
from orchestrator.storage.schema import CAP_COUNTED_STATES, deliveries, runs

UTC = timezone.utc
CHANNEL_ADDRESS = {"sms": "phone", "email": "email", "phone": "phone", "webhook": "id"}
Progress = Callable[[int], None]


@dataclass
class Prepared:
    """Everything about a campaign that does not depend on the recipient, built once per run."""

    file: CampaignFile
    segment: Any
    renderer: Any
    settings: Settings
    rules: Rules
    ctx: PolicyContext
    fields: frozenset[str] | None = None   # customer fields to fetch; None: all of them

    @property
    def campaign(self) -> Campaign:
        return self.file.campaign

    @cached_property
    def campaign_view(self) -> dict[str, str]:
        """`campaign` of templates."""
        campaign = self.file.campaign
        return {"name": campaign.name, "description": campaign.description, "category": campaign.category}


@dataclass
class RunSummary:
    campaign: str
    fire_at: datetime
    run_id: int | None = None
    existed: bool = False
    targeted: int = 0
    planned: int = 0
    suppressed: Counter = field(default_factory=Counter)
    by_channel: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "run": self.run_id,
            "fire_at": iso(self.fire_at),
            "already_planned": self.existed,
            "targeted": self.targeted,
            "planned": self.planned,
            "planned_by_channel": dict(self.by_channel),
            "suppressed": sum(self.suppressed.values()),
            "suppressed_by_reason": dict(self.suppressed),
        }


def iso(value: datetime | int | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return _iso_epoch(value)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=4096)
def _iso_epoch(value: int) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def prepare(settings: Settings, file: CampaignFile, *, engine: Engine | None = None) -> Prepared:
    """Resolve the segment and templates of a campaign; every error names its file and line."""
    from orchestrator.segments import inline_segment, load_segment, validate_segment

    campaign = file.campaign
    if campaign.where is not None:
        segment = inline_segment(
            campaign.where, name=f"{campaign.name} (inline)", file=file.file, lines=file.lines, loc=("where",)
        )
    else:
        path = settings.segments_dir / f"{campaign.segment}.yaml"
        if not path.exists():
            raise NotFound(
                f"segment '{campaign.segment}' not found (expected {path.relative_to(settings.root)})",
                file=file.file, line=file.lines.line(("segment",)), field="segment",
            )
        segment = load_segment(path)
    validate_segment(segment, engine)
    renderer = shared_renderer(settings)
    for channel in campaign.channels:
        renderer.check(channel, campaign.template, subject=campaign.subject if channel == "email" else None)
    rules = Rules(
        campaign=campaign.name,
        category=campaign.category,
        channels=tuple(campaign.channels),
        channel_mode=campaign.channel_mode,
        local_time=campaign.local_time,
        deliver_within=campaign.deliver_within_seconds,
        when_capped=campaign.when_capped,
    )
    return Prepared(file, segment, renderer, settings, rules, PolicyContext.from_settings(settings),
                    fields=_fields_needed(renderer, campaign))


POLICY_FIELDS = frozenset({
    "id", "email", "phone", "phone_invalid", "manager", "zones", "zone_source", "phone_cap_days",
    "consent_sms", "consent_email", "consent_phone", "unsubscribed_sms", "unsubscribed_email", "unsubscribed_phone",
})
TEMPLATE_ONLY_FIELDS = frozenset({"local_time"})


def _fields_needed(renderer: Any, campaign: Campaign) -> frozenset[str] | None:
    """What the policy and the campaign's templates read of a customer; the rest is not fetched."""
    fields = set(POLICY_FIELDS)
    for channel in campaign.channels:
        used = renderer.customer_fields(channel, campaign.template, subject=campaign.subject if channel == "email" else None)
        if used is None:
            return None
        fields |= used
    return frozenset(fields - TEMPLATE_ONLY_FIELDS)


_renderers: dict[tuple[str, int], Any] = {}


def shared_renderer(settings: Settings) -> Any:
    """One renderer per workspace: templates compile once, whatever the number of campaigns."""
    from orchestrator.rendering import Renderer

    key = (str(settings.templates_dir), settings.templates.max_output_kb)
    if key not in _renderers:
        _renderers[key] = Renderer(settings.templates_dir, max_output_bytes=settings.templates.max_output_kb * 1024)
    return _renderers[key]


# --- the trigger conditions -----------------------------------------------------------------


def trigger_condition(prepared: Prepared, fire_at: datetime) -> Any:
    """Extra SQL for triggered campaigns: birthday today, or became sleeping since the last run."""
    from orchestrator.derived import derived_columns

    trigger = prepared.campaign.trigger
    if trigger == "birthday":
        return derived_columns(fire_at, prepared.settings)["birthday_in_days"] == 0
    if trigger == "sleeping":
        now = derived_columns(fire_at, prepared.settings)["is_sleeping"]
        before = derived_columns(fire_at - timedelta(days=1), prepared.settings)["is_sleeping"]
        return sa.and_(now, sa.not_(sa.func.coalesce(before, sa.false())))
    return None


# --- per recipient ----------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def customer_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """The `customer` of templates: columns, derived fields, custom attributes (columns win)."""
    view = dict(row)
    _flatten_attrs(view)
    return view


def _flatten_attrs(row: dict[str, Any]) -> dict[str, Any]:
    """Custom attributes become fields of the customer; done in place, once per page row."""
    attrs = row.pop("attrs", None)
    if attrs:
        for key, value in attrs.items():
            row.setdefault(key, value)
    return row


class Links:
    """`links` of templates.  The signed unsubscribe link is computed only if a template uses it."""

    __slots__ = ("_settings", "_customer_id", "_channel", "_campaign", "_unsubscribe")

    def __init__(self, settings: Settings, customer_id: str, channel: str, campaign: str) -> None:
        self._settings = settings
        self._customer_id = customer_id
        self._channel = channel
        self._campaign = campaign
        self._unsubscribe: str | None = None

    @property
    def unsubscribe(self) -> str:
        if self._unsubscribe is None:
            self._unsubscribe = unsubscribe_link(
                self._settings.web.base_url, self._settings.general.secret_key,
                self._customer_id, self._channel, self._campaign,
            )
        return self._unsubscribe

    @property
    def cabinet(self) -> str:
        return cabinet_link(self._settings.web.base_url, self._customer_id)


@lru_cache(maxsize=4096)
def _local_moment(send_at: int, zone: str) -> datetime:
    """Recipients of a run share a few send times and zones; aware datetimes are immutable."""
    return datetime.fromtimestamp(send_at, UTC).astimezone(_zone(zone))


def _render_context(prepared: Prepared, customer: dict[str, Any], decision: Decision, links: Links) -> dict[str, Any]:
    moment = _local_moment(decision.send_at or 0, decision.zone)
    customer["local_time"] = moment
    return {
        "customer": customer,
        "offer": prepared.campaign.offer,
        "campaign": prepared.campaign_view,
        "links": links,
        "now": moment,
    }


def _offer_json(offer: Mapping[str, Any]) -> dict[str, Any]:
    """The campaign's offer as plain JSON values (dates become ISO text) for the call task."""
    return json.loads(json.dumps(offer, default=str, ensure_ascii=False))


def render_payload(prepared: Prepared, channel: str, row: Mapping[str, Any], decision: Decision, now: int) -> tuple[dict[str, Any] | None, str | None]:
    """Render one message; a template error suppresses this recipient with the reason kept."""
    campaign = prepared.campaign
    customer = _flatten_attrs(row if isinstance(row, dict) else dict(row))
    links = Links(prepared.settings, customer["id"], channel, campaign.name)
    try:
        rendered = prepared.renderer.render(
            channel,
            campaign.template,
            _render_context(prepared, customer, decision, links),
            subject=campaign.subject if channel == "email" else None,
            sms_max_parts=campaign.sms_max_parts,
        )
    except TemplateError as error:
        return None, str(error)
    payload: dict[str, Any] = {"address": customer.get(CHANNEL_ADDRESS.get(channel, "id")), "text": rendered.text}
    if channel == "phone":
        payload["manager"] = customer.get("manager")
        payload["offer"] = _offer_json(campaign.offer)
    if rendered.subject is not None:
        payload["subject"] = rendered.subject
    if rendered.html is not None:
        payload["html"] = rendered.html
    if rendered.sms is not None:
        payload["sms"] = {"encoding": rendered.sms.encoding, "units": rendered.sms.units, "parts": rendered.sms.parts}
    if channel == "email" and campaign.category in ("promo", "content"):
        payload["unsubscribe"] = links.unsubscribe
    return payload, None


def _ledger_row(run_id: int | None, campaign: str, customer_id: str, category: str, now: int, channel: str,
                status: str, reason: str | None, detail: str | None, send_at: int | None, expires_at: int,
                zone: str | None, zone_source: str) -> dict[str, Any]:
    return {
        "run_id": run_id, "campaign": campaign, "customer_id": customer_id, "channel": channel,
        "category": category, "status": status, "reason": reason, "detail": detail, "send_at": send_at,
        "expires_at": expires_at, "sent_at": None, "attempts": 0, "error": None, "provider_id": None,
        "zone": zone, "zone_source": zone_source, "payload": None, "created_at": now, "updated_at": now,
    }


def decide_page(
    prepared: Prepared,
    page: Sequence[Mapping[str, Any]],
    decisions_for: DecisionCache,
    history: Mapping[str, list[Sent]],
    run_id: int | None,
    now: int,
) -> list[dict[str, Any]]:
    """Decisions and rendered messages for one page of recipients, as ledger rows."""
    campaign = prepared.campaign
    fire_at = decisions_for.fire_at
    rows: list[dict[str, Any]] = []
    name, category = campaign.name, campaign.category
    for customer in page:
        customer_id = customer["id"]
        if campaign.in_holdout(customer_id):
            rows.append(_ledger_row(
                run_id, name, customer_id, category, now, campaign.channels[0], "suppressed", "holdout",
                f"holdout {campaign.holdout}", None, fire_at + prepared.rules.deliver_within, None,
                customer.get("zone_source") or "default",
            ))
            continue
        decisions = decisions_for.decide(recipient_of(customer), history.get(customer_id, ()))
        for decision in decisions:
            row = _ledger_row(
                run_id, name, customer_id, category, now, decision.channel, decision.status, decision.reason,
                decision.detail or None, decision.send_at, decision.expires_at, decision.zone, decision.zone_source,
            )
            if decision.status == "planned":
                payload, error = render_payload(prepared, decision.channel, customer, decision, now)
                if error is not None:
                    row.update(status="suppressed", reason="template_error", detail=error, send_at=None)
                else:
                    row["payload"] = payload
            rows.append(row)
    return rows


# --- storage -----------------------------------------------------------------------------------


def load_history(conn: Connection, customer_ids: Sequence[str], channels: Iterable[str], lo: int, hi: int,
                 run_id: int | None) -> tuple[dict[str, list[Sent]], set[str]]:
    """Every counted message of any campaign for these customers near this run's window, and the
    customers this very run already holds rows for (a resumed run, or the same run fired twice at
    once): those are decided already and are skipped, whatever the policy would say now."""
    moment = sa.func.coalesce(deliveries.c.sent_at, deliveries.c.send_at)
    # The status is checked here, not in SQL: given a status condition SQLite may walk the status
    # index (every planned row of the ledger) instead of the per-customer one.
    query = (
        sa.select(deliveries.c.customer_id, deliveries.c.channel, deliveries.c.category, moment,
                  deliveries.c.run_id, deliveries.c.status)
        .where(_one_of(conn, deliveries.c.customer_id, customer_ids))
        .where(deliveries.c.channel.in_(list(channels)))
        .where(moment >= lo, moment < hi)
    )
    counted = frozenset(CAP_COUNTED_STATES)
    history: dict[str, list[Sent]] = {}
    for customer_id, channel, category, at, row_run, status in conn.execute(query):
        if row_run != run_id and status in counted:
            history.setdefault(customer_id, []).append(Sent(channel=channel, category=category, at=int(at)))
    decided: set[str] = set()
    if run_id is not None:
        decided = set(conn.execute(
            sa.select(deliveries.c.customer_id).where(deliveries.c.run_id == run_id)
            .where(_one_of(conn, deliveries.c.customer_id, customer_ids))
        ).scalars())
    return history, decided


def _one_of(conn: Connection, column: Any, values: Sequence[str]) -> Any:
    """`column IN values` as ONE bound parameter (an array, a JSON list): a page's thousands of
    ids would otherwise be thousands of parameters for the driver to parse on every page."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        # PostgreSQL will not probe an index once per array element: it scans the table.  The
        # page's lowest and highest id (in the database's own collation) bound an index range.
        ids = sa.bindparam("ids", list(values), type_=ARRAY(sa.Text))
        elements = sa.func.unnest(ids).table_valued("value").render_derived()
        lowest = sa.select(sa.func.min(elements.c.value)).scalar_subquery()
        highest = sa.select(sa.func.max(elements.c.value)).scalar_subquery()
        return sa.and_(column >= lowest, column <= highest, column == sa.any_(ids))
    each = sa.func.json_each(sa.bindparam("ids", json.dumps(list(values)))).table_valued("value")
    return column.in_(sa.select(each.c.value))


def _insert(conn: Connection):  # type: ignore[no-untyped-def]
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


_payload_json = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps builds an encoder per call
LEDGER_COLUMNS = tuple(c.name for c in deliveries.c if c.name != "id")
_ledger_tuple = operator.itemgetter(*LEDGER_COLUMNS)


@lru_cache(maxsize=4)
def _insert_sql(dialect: str) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    return (
        f"INSERT INTO deliveries ({', '.join(LEDGER_COLUMNS)}) VALUES ({', '.join([mark] * len(LEDGER_COLUMNS))}) "
        "ON CONFLICT (run_id, customer_id, channel) DO NOTHING"
    )


def write_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """One executemany straight to the driver, the payload serialized here, once: per-row
    statement processing would cost more than the database's own insert (psycopg pipelines an
    executemany; multi-row VALUES statements measured 3.5 times slower here).
    The rows' payloads are replaced by their JSON text."""
    if not rows:
        return
    dumps = _payload_json
    for row in rows:
        if row["payload"] is not None:
            row["payload"] = dumps(row["payload"])
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, rows)
    else:
        conn.exec_driver_sql(_insert_sql(conn.dialect.name), list(map(_ledger_tuple, rows)))


def _copy_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: COPY straight into the ledger.  No row of this run can be there already for
    these customers: the page's customers are locked and the ones this run already holds are left
    out (`load_history`); were one there anyway, the unique index fails the page's transaction
    rather than writing a second row.  (A staging table and `INSERT … SELECT … ON CONFLICT` cost
    a third more per row.)"""
    cursor = conn.connection.driver_connection.cursor()
    with cursor.copy(f"COPY deliveries ({', '.join(LEDGER_COLUMNS)}) FROM STDIN") as copy:
        for values in map(_ledger_tuple, rows):
            copy.write_row(values)


def open_run(engine: Engine, campaign: str, fire_at: int) -> tuple[int, bool]:
    """Create the run (campaign, fire time) or find it; True when it was already fully planned."""
    with write_transaction(engine) as conn:
        now = int(clock.time())
        conn.execute(
            _insert(conn)(runs).on_conflict_do_nothing(index_elements=["campaign", "fire_at"]),
            {"campaign": campaign, "fire_at": fire_at, "status": "planning", "started_at": now},
        )
        run_id, status = conn.execute(
            sa.select(runs.c.id, runs.c.status).where(runs.c.campaign == campaign, runs.c.fire_at == fire_at)
        ).one()
    return run_id, status == "planned"


def run_counts(conn: Connection, run_id: int) -> tuple[int, Counter, Counter, int]:
    """(planned, suppressed by reason, planned by channel, distinct customers) of a run."""
    planned = 0
    suppressed: Counter = Counter()
    by_channel: Counter = Counter()
    query = (
        sa.select(deliveries.c.status, deliveries.c.reason, deliveries.c.channel, sa.func.count())
        .where(deliveries.c.run_id == run_id)
        .group_by(deliveries.c.status, deliveries.c.reason, deliveries.c.channel)
    )
    for status, reason, channel, count in conn.execute(query):
        if status == "suppressed":
            suppressed[reason] += count
        elif status != "cancelled":
            planned += count
            by_channel[channel] += count
    targeted = conn.execute(
        sa.select(sa.func.count(sa.distinct(deliveries.c.customer_id))).where(deliveries.c.run_id == run_id)
    ).scalar_one()
    return planned, suppressed, by_channel, targeted


def plan_run(
    data_engine: Engine,
    ledger_engine: Engine,
    prepared: Prepared,
    fire_at: datetime,
    *,
    dry_run: bool,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Plan one run.  dry_run: decide and report, write nothing (the `plan` command)."""
    from orchestrator.segments import iter_segment_pages

    started = clock.monotonic()
    campaign = prepared.campaign
    fire = int(fire_at.timestamp())
    summary = RunSummary(campaign=campaign.name, fire_at=fire_at)
    run_id: int | None = None
    if not dry_run:
        run_id, done = open_run(ledger_engine, campaign.name, fire)
        summary.run_id = run_id
        if done:
            summary.existed = True
            with ledger_engine.connect() as conn:
                summary.planned, summary.suppressed, summary.by_channel, summary.targeted = run_counts(conn, run_id)
            return summary
    pages = iter_segment_pages(
        data_engine, prepared.segment, now=fire_at, settings=prepared.settings,
        page_size=prepared.settings.planner.batch_size, extra_where=trigger_condition(prepared, fire_at),
        fields=prepared.fields,
    )
    decisions_for = DecisionCache(prepared.rules, fire, prepared.ctx)
    with bulk_work():
        _plan_pages(ledger_engine, prepared, pages, decisions_for, summary, run_id, dry_run, on_rows, progress)
    if not dry_run:
        with write_transaction(ledger_engine) as conn:
            summary.planned, summary.suppressed, summary.by_channel, summary.targeted = run_counts(conn, run_id)
            conn.execute(
                runs.update().where(runs.c.id == run_id).values(
                    status="planned", finished_at=int(clock.time()), summary=summary.to_dict()
                )
            )
    summary.seconds = clock.monotonic() - started
    return summary


def _plan_pages(ledger_engine: Engine, prepared: Prepared, pages: Iterable[list[dict[str, Any]]],
                decisions_for: DecisionCache, summary: RunSummary, run_id: int | None, dry_run: bool,
                on_rows: Callable[[list[dict[str, Any]]], None] | None, progress: Progress | None) -> None:
    """Decide, render and write the segment page by page, each page in its own transaction."""
    committer = None if dry_run or is_sqlite(ledger_engine) else _BackgroundCommit()
    try:
        for page in pages:
            now = int(clock.time())
            ids = [row["id"] for row in page]
            period = longest_window(prepared.settings.caps, (row.get("phone_cap_days") for row in page))
            lo, hi = decisions_for.fire_at - period, decisions_for.fire_at + prepared.rules.deliver_within + period
            channels = prepared.campaign.channels
            if dry_run:
                with ledger_engine.connect() as conn:
                    history, _ = load_history(conn, ids, channels, lo, hi, None)
                rows = decide_page(prepared, page, decisions_for, history, None, now)
            elif committer is None:
                with write_transaction(ledger_engine) as conn:
                    rows = _decide_locked(conn, prepared, page, decisions_for, run_id, now, lo, hi)
                    write_rows(conn, rows)
            else:
                conn = ledger_engine.connect()
                try:
                    transaction = conn.begin()
                    rows = _decide_locked(conn, prepared, page, decisions_for, run_id, now, lo, hi)
                except BaseException:
                    conn.close()
                    raise
                committer.submit(conn, transaction, rows)
            _count(summary, rows)
            if on_rows is not None:
                on_rows(rows)
            if progress is not None:
                progress(len(page))
    finally:
        if committer is not None:
            committer.close()


def _decide_locked(conn: Connection, prepared: Prepared, page: Sequence[Mapping[str, Any]],
                   decisions_for: DecisionCache, run_id: int | None, now: int, lo: int, hi: int) -> list[dict[str, Any]]:
    """The page's ledger rows, its customers locked for the rest of the transaction."""
    ids = [row["id"] for row in page]
    lock_customers(conn, ids)
    history, decided = load_history(conn, ids, prepared.campaign.channels, lo, hi, run_id)
    fresh = [row for row in page if row["id"] not in decided] if decided else page
    return decide_page(prepared, fresh, decisions_for, history, run_id, now)


class _BackgroundCommit:
    """PostgreSQL `run`: a page's COPY and commit go on in a thread while the next page is decided.

    The server's work for a page (the ledger's indexes, its WAL) took about a third of the time of
    deciding the next one, and done one after the other each waited for the other.  Every page
    still keeps its own transaction from lock to commit, so cap reservations hold exactly as
    before; the pages of one run hold different customers, so no page needs the rows of the one
    before it.  At most one page is in flight; its failure stops the run at the next page (the
    run is resumed like any interrupted one).
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ledger-commit")
        self._pending: Future[None] | None = None

    def submit(self, conn: Connection, transaction: sa.RootTransaction, rows: list[dict[str, Any]]) -> None:
        try:
            self.wait()
        except BaseException:
            conn.close()
            raise
        self._pending = self._executor.submit(_write_and_commit, conn, transaction, rows)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._executor.shutdown()


def _write_and_commit(conn: Connection, transaction: sa.RootTransaction, rows: list[dict[str, Any]]) -> None:
    try:
        write_rows(conn, rows)
        transaction.commit()
    finally:
        conn.close()


def _count(summary: RunSummary, rows: list[dict[str, Any]]) -> None:
    summary.targeted += len({row["customer_id"] for row in rows})
    for row in rows:
        if row["status"] == "suppressed":
            summary.suppressed[row["reason"]] += 1
        else:
            summary.planned += 1
            summary.by_channel[row["channel"]] += 1
