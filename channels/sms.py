"""An SMS gateway spoken to over HTTP, configurable for the common dialects (SPEC 2 and 8).

Most SMS gateways take one HTTP request per message and differ only in where the parameters go
(a JSON body, a form body or the query string), what they are called, and how the answer says
"accepted".  So the channel is one class driven by the `[channels.sms]` table: the parameter table
is a set of small Jinja2 templates over the message (`phone`, `phone_digits`, `text`, `sender`,
`ref`, `customer_id`) and over secret options (`login`, `password`, `token`, ... — any extra option
a template uses, typically set from `ORCHESTRATOR_CHANNELS_SMS_<KEY>`).

What an answer means decides whether the customer may get the message twice, so the rules are strict:

* the request could not be sent at all (refused connection, connect or pool timeout) → transient;
* the request may have reached the gateway (read or write timeout, connection dropped afterwards)
  → unknown, never retried: the SMS may already be on its way;
* HTTP 408, 429 and 5xx → transient; any other status outside `success_status` → permanent, with the
  provider's answer kept in the reason;
* a success status whose JSON answer fails `success_field` / `success_value` → permanent.

Performance: templates are compiled once, templates that use only settings (secrets, sender) are
rendered once, and one pooled keep-alive client serves every message of a worker.

This module also holds what the webhook channel shares with it: `PooledHttpChannel`,
`classify_transport_error`, `classify_status`, `JsonPath`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import operator
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from channels.base import Channel, Message, SendResult
from orchestrator.errors import ConfigError

REASON_LIMIT = 300
MESSAGE_VARIABLES = frozenset({"phone", "phone_digits", "text", "ref", "customer_id"})
BODY_DIALECTS = ("json", "form", "query")
_TEMPLATE_MARKS = ("{{", "{%", "{#")
_NON_DIGITS = re.compile(r"\D")
_WHITESPACE = re.compile(r"\s+")
_PATH_SEGMENT = re.compile(r"(?:\{\{.*?\}\}|\{%.*?%\}|[^.])+")
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
MISSING = object()

Render = Callable[[Sequence[str]], Any]
"""A value of the request, computed from the texts that the message's templates rendered."""


# ---------------------------------------------------------------------------------------------
# Templates


def _b64encode(value: Any) -> str:
    """For `Authorization: Basic` headers built from a login and a password."""
    return base64.b64encode(str(value).encode("utf-8")).decode("ascii")


def template_environment() -> ImmutableSandboxedEnvironment:
    """Settings are not code: a sandbox, and an unknown name is an error rather than ''."""
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    env.filters["b64encode"] = _b64encode
    return env


class TemplateSet:
    """Compiles a channel's templates once and renders all of a message's templates in one go.

    `static` holds the values known when the channel is built (secrets, sender): a template that
    uses nothing else is rendered at construction and costs nothing per message.  Names in
    `dynamic` are filled per message.  Per-message templates are joined into one Jinja template
    (each in its own `{% with %}` scope, separated by a random marker), because a Jinja render
    costs ~10 µs however small the template: one render per message instead of one per field.
    `compile` returns a `Render` that picks its field out of `render(context)`.  `used` collects
    every name any template refers to, so that an option no template uses can be reported as a typo.
    """

    def __init__(self, channel: str, static: Mapping[str, Any], dynamic: Iterable[str]) -> None:
        self.channel = channel
        self.static = dict(static)
        self.dynamic = frozenset(dynamic)
        self.env = template_environment()
        self.used: set[str] = set()
        self._sources: list[str] = []
        self._separator = f"\x1e{os.urandom(8).hex()}\x1e"
        self._combined: Any = None

    def field(self, *parts: str) -> str:
        return ".".join(("channels", self.channel, *parts))

    def compile(self, source: Any, *parts: str, flat: bool = False) -> Render:
        """Nested tables and lists are allowed only when not `flat` (a JSON body)."""
        where = self.field(*parts)
        if isinstance(source, str):
            return self._compile_text(source, where)
        if isinstance(source, Mapping) and not flat:
            items = [(str(key), self.compile(value, *parts, str(key))) for key, value in source.items()]
            return lambda rendered: {key: render(rendered) for key, render in items}
        if isinstance(source, list) and not flat:
            renders = [self.compile(value, *parts, str(index)) for index, value in enumerate(source)]
            return lambda rendered: [render(rendered) for render in renders]
        if isinstance(source, (bool, int, float)):
            return Constant(source)
        kind = "a table or list" if isinstance(source, (Mapping, list)) else type(source).__name__
        raise ConfigError(f"must be text or a number, not {kind}", field=where)

    def render_now(self, source: str, *parts: str) -> str:
        """Renders a template that may only use settings (the URL, for instance)."""
        where = self.field(*parts)
        if not any(mark in source for mark in _TEMPLATE_MARKS):
            return source
        template = self._parse(source, where, allowed=self.static.keys())
        return self._render_static(template, where)

    def finish(self) -> None:
        """Compiles the per-message templates into one; called once all fields are compiled."""
        if self._sources:
            joined = self._separator.join("{% with %}" + source + "{% endwith %}" for source in self._sources)
            self._combined = self.env.from_string(joined)

    def render(self, context: Mapping[str, Any]) -> Sequence[str]:
        """The texts of every per-message template, in the order they were compiled."""
        if self._combined is None:
            return ()
        texts = self._combined.render(context).split(self._separator)
        if len(texts) != len(self._sources):
            raise ValueError("a rendered value contains the field separator")
        return texts

    def _compile_text(self, source: str, where: str) -> Render:
        if not any(mark in source for mark in _TEMPLATE_MARKS):
            return Constant(source)
        template = self._parse(source, where, allowed=self.static.keys() | self.dynamic)
        if not (self._names(template) & self.dynamic):
            return Constant(self._render_static(template, where))
        self._sources.append(source)
        self._combined = None
        return operator.itemgetter(len(self._sources) - 1)

    def _parse(self, source: str, where: str, allowed: Iterable[str]) -> nodes.Template:
        try:
            template = self.env.parse(source)
        except TemplateError as error:
            raise ConfigError(f"not a valid template: {error}", field=where) from None
        names = self._names(template)
        unknown = sorted(names - set(allowed))
        if unknown:
            hint = f"ORCHESTRATOR_CHANNELS_{self.channel}_{unknown[0]}".upper()
            raise ConfigError(
                f"the template uses {', '.join(unknown)}, which is not defined here: known are "
                f"{', '.join(sorted(allowed)) or 'none'}; a secret option is set in the channel's "
                f"table or the environment (e.g. {hint})",
                field=where,
            )
        self.used |= names
        return template

    @staticmethod
    def _names(template: nodes.Template) -> set[str]:
        return set(meta.find_undeclared_variables(template))

    def _render_static(self, template: nodes.Template, where: str) -> str:
        try:
            return self.env.from_string(template).render(self.static)
        except Exception as error:  # noqa: BLE001 - any failure of a settings template is a config error
            raise ConfigError(f"the template does not render: {error}", field=where) from None


class Constant:
    """A value that does not depend on the message: rendered (if at all) when the channel is built."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, rendered: Sequence[str]) -> Any:
        return self.value


class JsonPath:
    """A dotted path into a JSON answer; a segment may be a template (`sms.{{ phone_digits }}.id`).

    Some gateways key their answer by the phone number, hence per-message segments.  A numeric
    segment indexes a list.
    """

    def __init__(self, source: str, templates: TemplateSet, *parts: str) -> None:
        self.source = source
        segments = _PATH_SEGMENT.findall(source) if isinstance(source, str) else []
        if not segments or ".".join(segments) != source:
            raise ConfigError(f"{source!r} is not a dotted path like status or sms.id", field=templates.field(*parts))
        self._segments = [templates.compile(segment, *parts) for segment in segments]

    def find(self, document: Any, rendered: Sequence[str]) -> Any:
        """The value at the path, or `MISSING`."""
        value = document
        for segment in self._segments:
            key = segment(rendered)
            if isinstance(value, Mapping):
                value = value.get(key, MISSING)
            elif isinstance(value, list) and isinstance(key, str) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                return MISSING
            if value is MISSING:
                return MISSING
        return value

    def describe(self, rendered: Sequence[str]) -> str:
        return ".".join(str(segment(rendered)) for segment in self._segments)


# ---------------------------------------------------------------------------------------------
# Outcomes


def short_text(data: bytes | str, limit: int = REASON_LIMIT) -> str:
    """The provider's answer as one line for a ledger reason: whitespace collapsed, truncated."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = _WHITESPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def classify_transport_error(error: httpx.HTTPError) -> SendResult:
    """Whether the gateway may have received the request decides between transient and unknown."""
    detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)):
        return SendResult.transient(f"not sent: {detail}")
    if isinstance(error, (httpx.LocalProtocolError, httpx.UnsupportedProtocol)):
        return SendResult.permanent(f"cannot build the request: {detail}")
    return SendResult.unknown(f"the request may have reached the gateway: {detail}")


def is_retryable_status(status: int) -> bool:
    """Request timeout, rate limiting and server errors: the gateway did not take the message."""
    return status in (408, 429) or status >= 500


def classify_status(status: int, body: bytes) -> SendResult:
    """An answer outside the success statuses."""
    answer = short_text(body)
    reason = f"HTTP {status}: {answer}" if answer else f"HTTP {status}"
    if is_retryable_status(status):
        return SendResult.transient(reason)
    return SendResult.permanent(reason)


def parse_success_status(value: Any, field: str) -> frozenset[int] | None:
    """`200`, `[200, 201]`, or None for any 2xx."""
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in values):
        raise ConfigError(f"must be an HTTP status or a list of them, not {value!r}", field=field)
    return frozenset(values)


def json_answer(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return MISSING


# ---------------------------------------------------------------------------------------------
# The pooled client


class PooledHttpChannel(Channel):
    """One keep-alive httpx client per worker, opened lazily and re-made if the event loop changed.

    A client belongs to the loop it was made in; a worker that runs `asyncio.run` per batch without
    calling `open()` still gets a working client instead of "Event loop is closed".
    """

    def __init__(
        self,
        name: str,
        *,
        timeout: float = 10,
        max_connections: int = 10,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        super().__init__(name)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ConfigError(f"must be a positive number of seconds, not {timeout!r}", field=f"channels.{name}.timeout")
        if not isinstance(max_connections, int) or isinstance(max_connections, bool) or max_connections < 1:
            raise ConfigError(
                f"must be a positive number, not {max_connections!r}", field=f"channels.{name}.max_connections"
            )
        self.timeout = float(timeout)
        self.max_connections = max_connections
        self._client_headers = dict(headers or {})
        self._pool: asyncio.Queue[httpx.AsyncClient] | None = None
        self._all_clients: list[httpx.AsyncClient] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def parallel(self) -> int:  # type: ignore[override]
        """Two messages per connection: one on the wire, one ready to go when it frees."""
        return 2 * self.max_connections

    async def open(self) -> None:
        self._current_pool()

    async def close(self) -> None:
        pool, self._pool, self._loop = self._pool, None, None
        if pool is not None:
            await asyncio.gather(*(client.aclose() for client in self._all_clients))
        self._all_clients = []

    def _current_pool(self) -> asyncio.Queue[httpx.AsyncClient]:
        """`max_connections` clients of one connection each, each used by one request at a time.

        One httpx client shared by many concurrent requests spends its time scanning its own pool
        (httpcore re-checks every connection for each waiting request): several one-connection
        clients handed out through a queue reach about twice the rate on one core.
        """
        loop = asyncio.get_running_loop()
        if self._pool is None or self._loop is not loop:
            # One TLS context for all of them: each loads the CA bundle, ~50 ms of CPU apiece.
            tls = httpx.create_ssl_context()
            self._all_clients = [
                httpx.AsyncClient(
                    timeout=httpx.Timeout(self.timeout),
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    headers=self._client_headers,
                    verify=tls,
                )
                for _ in range(self.max_connections)
            ]
            self._pool = asyncio.LifoQueue()  # the warmest connection first: idle ones may expire
            for client in self._all_clients:
                self._pool.put_nowait(client)
            self._loop = loop
        return self._pool

    async def _request(
        self, method: str, url: httpx.URL, content: bytes | None, headers: Mapping[str, Any] | None
    ) -> httpx.Response | SendResult:
        """The response, or the outcome of a request that got none."""
        pool = self._current_pool()
        client = await pool.get()
        try:
            return await client.request(method, url, content=content, headers=headers)
        except httpx.HTTPError as error:
            return classify_transport_error(error)
        finally:
            pool.put_nowait(client)


# ---------------------------------------------------------------------------------------------
# The SMS gateway


class HttpGateway(PooledHttpChannel):
    """Sends one SMS per HTTP request to a gateway described by the `[channels.sms]` table.

    Options: `url`, `method` (POST; GET by default with `body = "query"`), `body` ("json" | "form"
    | "query"), `sender`, `params` (name → template; nested tables and lists in a JSON body),
    `headers` (name → template), `success_status` (an int or a list, default any 2xx),
    `success_field` and `success_value`, `message_id_field`, `timeout` (seconds, default 10),
    `max_connections` (default 10), and secret options that the templates use.
    """

    def __init__(
        self,
        name: str,
        *,
        url: str = "",
        method: str | None = None,
        body: str = "json",
        sender: str = "",
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        success_status: int | list[int] | None = None,
        success_field: str | None = None,
        success_value: Any = None,
        message_id_field: str | None = None,
        timeout: float = 10,
        max_connections: int = 10,
        **secrets: Any,
    ) -> None:
        secrets = check_secrets(name, secrets)
        templates = TemplateSet(name, secrets | {"sender": sender}, MESSAGE_VARIABLES)
        if body not in BODY_DIALECTS:
            raise ConfigError(f"must be one of {', '.join(BODY_DIALECTS)}, not {body!r}", field=templates.field("body"))
        for key, table in (("params", params), ("headers", headers)):
            if table is not None and not isinstance(table, Mapping):
                raise ConfigError("must be a table of templates", field=templates.field(key))
        static_headers, self._dynamic_headers = split_headers(templates, headers or {})
        content_type = {"json": b"application/json", "form": b"application/x-www-form-urlencoded"}.get(body)
        if content_type and not any(key.lower() == "content-type" for key in static_headers):
            static_headers["Content-Type"] = content_type
        super().__init__(name, timeout=timeout, max_connections=max_connections, headers=static_headers)
        self.body = body
        self.method = _check_method(method or ("GET" if body == "query" else "POST"), templates.field("method"))
        self.url = check_url(templates.render_now(url, "url") if isinstance(url, str) else url, templates.field("url"))
        self._base_url = httpx.URL(self.url)
        self._params = [
            (str(key), templates.compile(value, "params", str(key), flat=body != "json"))
            for key, value in (params or {}).items()
        ]
        self.success_statuses = parse_success_status(success_status, templates.field("success_status"))
        self.success_field = JsonPath(success_field, templates, "success_field") if success_field else None
        if success_value is not None and success_field is None:
            raise ConfigError("needs success_field: which field of the answer to compare", field=templates.field("success_value"))
        self.success_value = success_value
        self.message_id_field = JsonPath(message_id_field, templates, "message_id_field") if message_id_field else None
        reject_unused_secrets(templates, secrets)
        templates.finish()
        self._templates = templates

    async def send(self, message: Message) -> SendResult:
        text = message.content.get("text")
        if text is None:
            return SendResult.permanent("the message has no text")
        try:
            rendered = self._templates.render(self._context(message, str(text)))
            headers = {key: render(rendered) for key, render in self._dynamic_headers} or None
            url, content = self._encode({key: render(rendered) for key, render in self._params})
        except Exception as error:  # noqa: BLE001 - this message's data cannot make a request
            return SendResult.permanent(f"cannot build the request for channels.{self.name}: {error}")
        answer = await self._request(self.method, url, content, headers)
        if isinstance(answer, SendResult):
            return answer
        return self._judge(answer.status_code, answer.content, rendered)

    def _context(self, message: Message, text: str) -> dict[str, Any]:
        context = dict(self._templates.static)
        context["phone"] = message.address
        context["phone_digits"] = _NON_DIGITS.sub("", message.address)
        context["text"] = text
        context["ref"] = message.ref
        context["customer_id"] = message.customer_id
        return context

    def _encode(self, values: dict[str, Any]) -> tuple[httpx.URL, bytes | None]:
        """The URL and body of one request in this gateway's dialect."""
        if self.body == "json":
            return self._base_url, json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        pairs = {key: _form_value(value) for key, value in values.items()}
        if self.body == "form":
            return self._base_url, urlencode(pairs).encode("ascii")
        if not pairs:
            return self._base_url, None
        return with_query(self._base_url, urlencode(pairs, quote_via=quote)), None

    def _judge(self, status: int, body: bytes, rendered: Sequence[str]) -> SendResult:
        accepted = 200 <= status < 300 if self.success_statuses is None else status in self.success_statuses
        if not accepted:
            return classify_status(status, body)
        document = json_answer(body) if (self.success_field or self.message_id_field) else MISSING
        if self.success_field is not None:
            refusal = self._refusal(document, rendered)
            if refusal:
                return SendResult.permanent(f"HTTP {status}, {refusal}: {short_text(body)}")
        return SendResult.sent(self._provider_id(document, rendered))

    def _refusal(self, document: Any, rendered: Sequence[str]) -> str | None:
        """Why a success status still means "not accepted", or None."""
        assert self.success_field is not None
        path = self.success_field.describe(rendered)
        if document is MISSING:
            return f"the answer is not JSON (expected {path})"
        value = self.success_field.find(document, rendered)
        if value is MISSING:
            return f"no {path} in the answer"
        if self.success_value is None:
            return f"{path} is empty" if value is None or value in ("", [], {}) else None
        if value == self.success_value or str(value) == str(self.success_value):
            return None
        return f"{path} is {value!r}, expected {self.success_value!r}"

    def _provider_id(self, document: Any, rendered: Sequence[str]) -> str | None:
        if self.message_id_field is None or document is MISSING:
            return None
        value = self.message_id_field.find(document, rendered)
        return None if value is MISSING or value is None or value == "" else str(value)


def with_query(base: httpx.URL, query: str) -> httpx.URL:
    """`base` with an already percent-encoded query appended.

    httpx re-validates and re-quotes a URL character by character in Python, which for a
    Cyrillic SMS in the query string costs more than the rest of the request; our query holds only
    unreserved characters and %XX escapes, so the parsed URL is reused with the query replaced.
    """
    if base.query:
        query = base.query.decode("ascii") + "&" + query
    reference = getattr(base, "_uri_reference", None)
    if reference is None or not hasattr(reference, "_replace"):
        return base.copy_with(query=query.encode("ascii"))
    url = httpx.URL.__new__(httpx.URL)
    url._uri_reference = reference._replace(query=query)
    return url


def _form_value(value: Any) -> str:
    """Form and query values are text; booleans as JSON writes them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


DISPATCHER_KEYS = frozenset({"backend", "rate"})
"""Keys of a channel table that belong to the dispatcher; ignored if they are passed on."""


def check_secrets(name: str, secrets: Mapping[str, Any]) -> dict[str, Any]:
    """Extra options are values for templates: scalars with names a template can use."""
    secrets = {key: value for key, value in secrets.items() if key not in DISPATCHER_KEYS}
    for key, value in secrets.items():
        field = f"channels.{name}.{key}"
        if not _IDENTIFIER.fullmatch(key):
            raise ConfigError("unknown setting (not a name a template can use)", field=field)
        if key in MESSAGE_VARIABLES:
            raise ConfigError(f"'{key}' is filled from each message and cannot be set", field=field)
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"unknown setting (a {type(value).__name__}, not a value for templates)", field=field)
    return dict(secrets)


def reject_unused_secrets(templates: TemplateSet, secrets: Mapping[str, Any]) -> None:
    """An extra option that no template uses is almost always a misspelt setting."""
    for key in secrets:
        if key not in templates.used:
            raise ConfigError(
                "unknown setting: not an option of the HTTP gateway, and no template uses it",
                field=templates.field(key),
            )


def split_headers(templates: TemplateSet, headers: Mapping[str, Any]) -> tuple[dict[str, bytes], list[tuple[str, Render]]]:
    """Headers that depend only on settings go to the client once; the rest are rendered per message.

    Values are sent as UTF-8 bytes: httpx would refuse a non-ASCII text value with an exception
    that is not an HTTP error.
    """
    static: dict[str, bytes] = {}
    dynamic: list[tuple[str, Render]] = []
    for key, value in headers.items():
        render = templates.compile(value, "headers", str(key), flat=True)
        if isinstance(render, Constant):
            static[str(key)] = _form_value(render.value).encode("utf-8")
        else:
            dynamic.append((str(key), lambda context, render=render: _form_value(render(context)).encode("utf-8")))
    return static, dynamic


def _check_method(method: Any, field: str) -> str:
    if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z]+", method):
        raise ConfigError(f"{method!r} is not an HTTP method like POST or GET", field=field)
    return method.upper()


def check_url(url: Any, field: str) -> str:
    """A settings mistake in the URL is reported when the channel is built, not per message."""
    if not url or not isinstance(url, str):
        raise ConfigError("the gateway's URL is required", field=field)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as error:
        raise ConfigError(f"not a valid URL: {error}", field=field) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"'{url}' is not an http:// or https:// URL", field=field)
    return url
