"""Endpoints without a login: one-click unsubscribe, the SMS gateway's hooks, health and metrics.

**Unsubscribe** (`/u/{token}`, RFC 8058): the signed token of orchestrator/links.py decides the
customer and the channel.  GET shows a confirmation page with one button and changes nothing (mail
scanners follow links); POST — from that button or straight from a mail client's one-click
unsubscribe with the body `List-Unsubscribe=One-Click` — withdraws the consent at once (pending
messages of that channel become `suppressed: unsubscribed`).  It needs no session and no CSRF token:
the token is the authorization, and posting it twice is harmless.  A forged or altered token, or
one whose customer no longer exists, gets a clear page with status 400.

**SMS gateway hooks** (`POST /hooks/sms/status`, `POST /hooks/sms/inbound`) need the shared secret
`[web] hook_secret` (env `ORCHESTRATOR_WEB_HOOK_SECRET`) in the `X-Hook-Secret` header or the
`secret` query parameter (for gateways that can only call a URL); it is compared in constant time,
and a missing or wrong one — or an empty setting — answers 401.  Parameters are read from the query
string, a form body or a JSON body (an object, or an array of objects for batched reports), under
the names the common gateways use:

* status: the row is found by `ref` (aliases `reference`, `client_ref`, `custom_id`: our ledger row
  id, which the SMS channel sends to the gateway as `ref`) or else by the provider's message id
  (`message_id`, `id`, `msg_id`, `messageId`, `sms_id`, `provider_id`: the id the gateway answered
  when sending); the state is `status` (or `state`, `dlr_status`, `stat`).  `delivered`/`DELIVRD`/
  `read` confirm the message: an `unknown` row (worker lost mid-send) becomes `sent`.
  `undelivered`/`failed`/`rejected`/`expired`/... make a `sent` or `unknown` row `failed`, with the
  report as its error (it no longer counts against the cap: the customer did not get it).  Other
  states (accepted, enroute, ...) are only noted.  A report for a row not found answers 200 with
  `matched: 0` (a gateway retries a non-2xx answer for ever).
* inbound: the sender is `from` (or `phone`, `sender`, `msisdn`, `source`, `src`), the text `text`
  (or `message`, `body`, `msg`, `sms`).  When the first word is STOP or СТОП (also UNSUBSCRIBE,
  ОТПИСАТЬСЯ, ОТПИСКА), every customer with that phone number (normalized to E.164 with the
  settings' country) is unsubscribed from SMS.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time as clock
from datetime import datetime, timezone
from typing import Any, Iterable

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from orchestrator.errors import InputError, NotFound
from orchestrator.ledger import UNSUBSCRIBABLE, unsubscribe
from orchestrator.links import verify_unsubscribe
from orchestrator.storage.engine import current_version, write_transaction
from orchestrator.storage.schema import SCHEMA_VERSION, customers, deliveries

log = logging.getLogger("orchestrator.web")
UTC = timezone.utc
MAX_HOOK_BYTES = 1024 * 1024
MAX_REPORTS = 1000

REF_KEYS = ("ref", "reference", "client_ref", "custom_id")
ID_KEYS = ("message_id", "id", "msg_id", "messageId", "sms_id", "provider_id")
STATUS_KEYS = ("status", "state", "dlr_status", "stat")
PHONE_KEYS = ("from", "phone", "sender", "msisdn", "source", "src")
TEXT_KEYS = ("text", "message", "body", "msg", "sms")

DELIVERED = frozenset({"delivered", "delivrd", "read", "success", "delivered_to_handset"})
UNDELIVERED = frozenset({
    "undelivered", "undeliv", "failed", "failure", "rejected", "rejectd", "expired", "expird",
    "error", "deleted", "not_delivered", "undeliverable", "blocked",
})
STOP_WORDS = frozenset({"stop", "стоп", "unsubscribe", "отписаться", "отписка"})
CHANNEL_WORDS = {"email": "emails", "sms": "SMS messages", "phone": "calls", "webhook": "messages"}


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    response = request.app.state.templates.TemplateResponse(request, name, context, status_code=status)
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


# --- unsubscribe -------------------------------------------------------------------------------------


class _NoSecret(Exception):
    pass


def _check_token(request: Request, token: str) -> tuple[str, str, str]:
    secret = request.app.state.settings.general.secret_key
    if not secret:
        log.error("an unsubscribe link could not be checked: general.secret_key is empty "
                  "(set ORCHESTRATOR_GENERAL_SECRET_KEY)")
        raise _NoSecret()
    return verify_unsubscribe(secret, token)


def _unavailable_page(request: Request) -> Response:
    return _render(request, "unsubscribe.html", {
        "state": "invalid", "channel_words": "",
        "message": "this link cannot be checked at the moment; please try again later, or reply to the message "
                   "and ask us to stop",
    }, 503)


def _customer_state(engine: Any, customer_id: str, channel: str) -> bool | None:
    """None: no such customer; else whether they are already unsubscribed from the channel."""
    column = f"unsubscribed_{channel}"
    if channel not in UNSUBSCRIBABLE or column not in customers.c:
        return None
    with engine.connect() as conn:
        row = conn.execute(sa.select(customers.c[column]).where(customers.c.id == customer_id)).first()
    return None if row is None else row[0] is not None


def _invalid_page(request: Request, message: str) -> Response:
    return _render(request, "unsubscribe.html", {"state": "invalid", "message": message, "channel_words": ""}, 400)


def _link_or_page(request: Request) -> tuple[str, str, str] | Response:
    """The link's (customer, channel, campaign), or the page that says why it cannot be followed."""
    try:
        return _check_token(request, request.path_params["token"])
    except _NoSecret:
        return _unavailable_page(request)
    except InputError as error:
        return _invalid_page(request, error.message)


async def unsubscribe_page(request: Request) -> Response:
    link = _link_or_page(request)
    if isinstance(link, Response):
        return link
    customer_id, channel, _campaign = link
    state = await run_in_threadpool(_customer_state, request.app.state.engine, customer_id, channel)
    if state is None:
        return _invalid_page(request, "this unsubscribe link is no longer valid")
    return _render(request, "unsubscribe.html", {
        "state": "done" if state else "confirm", "message": "", "channel_words": CHANNEL_WORDS.get(channel, channel),
        "action": request.url.path,
    })


async def unsubscribe_post(request: Request) -> Response:
    """RFC 8058 one-click: no session, no CSRF token; the signed token says who and what."""
    link = _link_or_page(request)
    if isinstance(link, Response):
        return link
    customer_id, channel, campaign = link
    try:
        withdrawn = await run_in_threadpool(
            unsubscribe, request.app.state.engine, customer_id, channel, source=f"link, campaign {campaign}"[:200]
        )
    except NotFound:
        return _invalid_page(request, "this unsubscribe link is no longer valid")
    except InputError as error:
        return _invalid_page(request, error.message)
    log.info("unsubscribed a customer from %s by link (%d pending message(s) withdrawn)", channel, withdrawn)
    return _render(request, "unsubscribe.html", {
        "state": "done", "message": "", "channel_words": CHANNEL_WORDS.get(channel, channel), "action": request.url.path,
    })


# --- gateway hooks -----------------------------------------------------------------------------------


def _authorized(request: Request) -> bool:
    expected = request.app.state.settings.web.hook_secret
    if not expected:
        return False
    given = request.headers.get("x-hook-secret")
    if given is None:
        given = request.query_params.get("secret")
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class _BadHook(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_HOOK_BYTES):
        raise _BadHook("the body is too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_HOOK_BYTES:
            raise _BadHook("the body is too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _reports(request: Request) -> list[dict[str, str]]:
    """The query string and the body (form or JSON), as flat text mappings."""
    query = {k: v for k, v in request.query_params.items() if k != "secret"}
    body = await _read_body(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    items: list[dict[str, Any]] = []
    if body.strip():
        if content_type == "application/json" or (not content_type and body.lstrip()[:1] in (b"{", b"[")):
            try:
                document = json.loads(body)
            except ValueError:
                raise _BadHook("the body is not valid JSON") from None
            if isinstance(document, dict):
                items = [document]
            elif isinstance(document, list) and all(isinstance(x, dict) for x in document):
                items = document[:MAX_REPORTS]
            else:
                raise _BadHook("the JSON body must be an object or an array of objects")
        elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data", ""):
            from urllib.parse import parse_qsl

            if content_type == "multipart/form-data":
                form = await _multipart(request, body)
            else:
                try:
                    form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
                except UnicodeDecodeError:
                    raise _BadHook("the form body is not UTF-8") from None
            items = [form]
        else:
            raise _BadHook(f"unsupported content type '{content_type[:60]}'")
    if not items:
        items = [{}]
    return [{**query, **{str(k): _text(v) for k, v in item.items()}} for item in items]


async def _multipart(request: Request, body: bytes) -> dict[str, Any]:
    from starlette.formparsers import MultiPartParser

    async def stream():  # type: ignore[no-untyped-def]
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=0, max_fields=100).parse()
    except Exception:  # noqa: BLE001
        raise _BadHook("the multipart body could not be read") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _first(item: dict[str, str], keys: Iterable[str]) -> str:
    for key in keys:
        value = item.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return ""


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def apply_status_report(engine: Any, ref: str, provider_id: str, status: str, now: int) -> dict[str, Any]:
    """One delivery report → the ledger row it is about (see the module doc)."""
    state = status.strip().lower().replace(" ", "_")
    with write_transaction(engine) as conn:
        query = sa.select(deliveries.c.id, deliveries.c.status, deliveries.c.detail, deliveries.c.sent_at).where(
            deliveries.c.channel == "sms"
        )
        row = None
        if ref.isdigit() and len(ref) < 19:
            row = conn.execute(query.where(deliveries.c.id == int(ref))).first()
        if row is None and provider_id:
            row = conn.execute(query.where(deliveries.c.provider_id == provider_id[:500]).limit(1)).first()
        if row is None:
            return {"matched": False}
        note = f"delivery report: {status[:60] or 'no status'} at {_iso(now)}"
        detail = re.sub(r"(?:^|; )delivery report: [^;]*$", "", row.detail or "")
        values: dict[str, Any] = {"detail": f"{detail}; {note}" if detail else note, "updated_at": now}
        if state in DELIVERED and row.status in ("sent", "unknown"):
            values.update(status="sent", sent_at=row.sent_at or now, error=None)
        elif state in UNDELIVERED and row.status in ("sent", "unknown"):
            values.update(status="failed", error=f"the gateway reported: {status[:60]}")
        elif row.status not in ("sent", "unknown", "failed"):
            # Still `sending`: the worker records its own outcome; the report waits in the detail.
            values = {"detail": values["detail"], "updated_at": now}
        result = conn.execute(
            deliveries.update().where(deliveries.c.id == row.id, deliveries.c.status == row.status).values(values)
        )
        return {"matched": True, "updated": bool(result.rowcount), "status": values.get("status", row.status)}


async def sms_status(request: Request) -> Response:
    if not _authorized(request):
        return JSONResponse({"error": "a valid hook secret is required"}, status_code=401)
    try:
        reports = await _reports(request)
    except _BadHook as error:
        return JSONResponse({"error": str(error)}, status_code=400)
    engine = request.app.state.engine
    now = int(clock.time())
    matched = updated = 0
    for item in reports:
        ref, provider_id, status = _first(item, REF_KEYS), _first(item, ID_KEYS), _first(item, STATUS_KEYS)
        if not (ref or provider_id):
            return JSONResponse({"error": "each report needs a ref or a message id"}, status_code=400)
        result = await run_in_threadpool(apply_status_report, engine, ref, provider_id, status, now)
        matched += result["matched"]
        updated += bool(result.get("updated"))
    if matched < len(reports):
        log.warning("sms status hook: %d of %d report(s) matched no SMS in the ledger", len(reports) - matched, len(reports))
    return JSONResponse({"received": len(reports), "matched": matched, "updated": updated})


def is_stop(text: str) -> bool:
    words = re.findall(r"\w+", text.casefold())
    return bool(words) and words[0] in STOP_WORDS


def _customers_with_phone(engine: Any, phone: str) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.select(customers.c.id).where(customers.c.phone == phone))]


def stop_from(engine: Any, settings: Any, raw_phone: str) -> dict[str, Any]:
    from orchestrator.normalize import PhoneNormalizer

    try:
        phone = PhoneNormalizer(settings.general.country)(raw_phone)
    except ValueError:
        raise InputError("the sender is not a phone number") from None
    found = _customers_with_phone(engine, phone)
    withdrawn = 0
    for customer_id in found:
        try:
            withdrawn += unsubscribe(engine, customer_id, "sms", source="sms STOP")
        except NotFound:
            continue
    return {"customers": len(found), "withdrawn": withdrawn}


async def sms_inbound(request: Request) -> Response:
    if not _authorized(request):
        return JSONResponse({"error": "a valid hook secret is required"}, status_code=401)
    try:
        reports = await _reports(request)
    except _BadHook as error:
        return JSONResponse({"error": str(error)}, status_code=400)
    settings, engine = request.app.state.settings, request.app.state.engine
    answer = {"received": len(reports), "stop": 0, "customers": 0, "withdrawn": 0}
    for item in reports:
        phone, text = _first(item, PHONE_KEYS), _first(item, TEXT_KEYS)
        if not phone:
            return JSONResponse({"error": "each message needs the sender's phone ('from')"}, status_code=400)
        if not is_stop(text):
            continue
        try:
            result = await run_in_threadpool(stop_from, engine, settings, phone[:64])
        except InputError as error:
            return JSONResponse({"error": error.message}, status_code=400)
        answer["stop"] += 1
        answer["customers"] += result["customers"]
        answer["withdrawn"] += result["withdrawn"]
        log.info("sms STOP: %d customer(s) unsubscribed from sms", result["customers"])
    return JSONResponse(answer)


# --- health and metrics ----------------------------------------------------------------------------


def _health(engine: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
        version = current_version(conn)
    return {"status": "ok" if version == SCHEMA_VERSION else "error", "database": "ok", "schema": version,
            "expected_schema": SCHEMA_VERSION}


async def healthz(request: Request) -> Response:
    try:
        report = await run_in_threadpool(_health, request.app.state.engine)
    except Exception as error:  # noqa: BLE001 - the answer says what is wrong, without a traceback
        log.warning("healthz: the database did not answer: %s", type(error).__name__)
        return JSONResponse({"status": "error", "database": f"unreachable ({type(error).__name__})"}, status_code=503,
                            headers={"Cache-Control": "no-store"})
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503,
                        headers={"Cache-Control": "no-store"})


async def metrics(request: Request) -> Response:
    from orchestrator.web.metrics import CONTENT_TYPE

    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
