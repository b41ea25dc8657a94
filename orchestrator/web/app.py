"""The Starlette application: routes, middleware, error pages.

Routes (see pages.py and public.py for what each does):

    GET  /login, POST /login, POST /logout       sign in and out (CSRF-protected forms)
    GET  /                                       home: campaigns (marketer) or the task board (manager)
    GET  /campaigns                              marketer: campaigns, next runs, last run
    GET  /campaigns/{name}                       marketer: the campaign's report (SVG charts, tables)
    GET  /customers?q=                           marketer: find a customer
    GET  /customers/{id}                         the card, contact history, next allowed per channel
                                                 (a manager: their own clients only)
    POST /customers/{id}/unsubscribe             withdraw a channel's consent (same access as the card)
    GET  /tasks?manager=&status=                 the task board (a manager: their own tasks only)
    GET  /tasks/{id}                             one task with its card, script and outcome form
    POST /tasks/{id}/outcome                     record an outcome (a manager: their own tasks only)
    GET  /control?manager=                       management control (a manager: their own figures)
    GET  /u/{token}, POST /u/{token}             public: unsubscribe page and RFC 8058 one-click
    POST /hooks/sms/status, /hooks/sms/inbound   public with the hook secret: gateway callbacks
    GET  /healthz, GET /metrics                  public: health (database) and Prometheus metrics
    GET  /static/...                             the stylesheet
"""

from __future__ import annotations

import logging
import re
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import unquote_plus

from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.settings import Settings, parse_duration
from orchestrator.web import auth, pages, public
from orchestrator.web.formatting import make_environment

log = logging.getLogger("orchestrator.web")
STATIC = Path(__file__).parent / "static"

CSP = (
    "default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


class SecurityHeaders:
    """Headers every answer carries: no sniffing, no framing, a strict CSP; pages are not cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                present = {name.lower() for name, _ in headers}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", CSP.encode()),
                    (b"referrer-policy", b"same-origin"),
                ]
                if not path.startswith("/static/"):
                    extra.append((b"cache-control", b"no-store"))
                headers.extend((name, value) for name, value in extra if name not in present)
            await send(message)

        await self.app(scope, receive, send_wrapper)


def _error_page(request: Request, status: int, message: str) -> Response:
    titles = {400: "Bad request", 401: "Not signed in", 403: "Not allowed", 404: "Not found",
              405: "Not allowed", 413: "Too large", 429: "Too many attempts", 500: "Something went wrong"}
    if request.url.path.startswith(("/hooks/", "/healthz", "/metrics")):
        from starlette.responses import JSONResponse

        return JSONResponse({"error": message}, status_code=status)
    context = {"title": titles.get(status, "Error"), "message": message, "status": status}
    try:
        return request.app.state.templates.TemplateResponse(request, "error.html", context, status_code=status)
    except Exception:  # noqa: BLE001 - the error page itself must never fail
        log.exception("the error page could not be rendered")
        return Response(f"{status} {message}", status_code=status, media_type="text/plain; charset=utf-8")


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    defaults = {404: "There is no such page, or it is not yours to see.", 405: "This address does not take that method."}
    message = error.detail if error.detail and error.detail != _phrase(error.status_code) else defaults.get(
        error.status_code, _phrase(error.status_code))
    response = _error_page(request, error.status_code, message)
    if error.headers:
        response.headers.update(error.headers)
    return response


async def _server_error(request: Request, error: Exception) -> Response:
    log.error("unhandled error on %s %s: %s", request.method, request.url.path, type(error).__name__, exc_info=error)
    return _error_page(request, 500, "The server could not complete this request. It has been logged.")


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def create_app(settings: Settings, *, engine: Engine | None = None) -> Starlette:
    """The web app of a workspace.  `engine`: an already open database (tests); else one is opened
    (and migrated) from the settings."""
    from orchestrator.storage.engine import connect
    from orchestrator.web.metrics import Metrics

    if engine is None:
        engine = connect(settings.database_url)
    secret = auth.session_secret(settings.general.secret_key)
    if secret is None:
        log.warning(
            "general.secret_key is empty: logins last until this process stops, and unsubscribe links "
            "cannot be verified (set ORCHESTRATOR_GENERAL_SECRET_KEY)"
        )
        secret = secrets.token_hex(32)
    if not settings.web.hook_secret:
        log.info("the SMS gateway hooks refuse every call: [web] hook_secret is empty "
                 "(set ORCHESTRATOR_WEB_HOOK_SECRET)")
    templates = Jinja2Templates(env=make_environment(), context_processors=[pages.context])

    routes = [
        Route("/", pages.home, methods=["GET"]),
        Route("/login", pages.login_page, methods=["GET"]),
        Route("/login", pages.login_post, methods=["POST"]),
        Route("/logout", pages.logout_post, methods=["POST"]),
        Route("/campaigns", pages.campaigns_page, methods=["GET"]),
        Route("/campaigns/{name}", pages.campaign_page, methods=["GET"]),
        Route("/customers", pages.customers_page, methods=["GET"]),
        Route("/customers/{customer_id:path}/unsubscribe", pages.customer_unsubscribe, methods=["POST"]),
        Route("/customers/{customer_id:path}", pages.customer_page, methods=["GET"]),
        Route("/tasks", pages.tasks_page, methods=["GET"]),
        Route("/tasks/{task_id:int}", pages.task_page, methods=["GET"]),
        Route("/tasks/{task_id:int}/outcome", pages.task_outcome, methods=["POST"]),
        Route("/control", pages.control_page, methods=["GET"]),
        Route("/u/{token}", public.unsubscribe_page, methods=["GET"]),
        Route("/u/{token}", public.unsubscribe_post, methods=["POST"]),
        Route("/hooks/sms/status", public.sms_status, methods=["POST"]),
        Route("/hooks/sms/inbound", public.sms_inbound, methods=["POST"]),
        Route("/healthz", public.healthz, methods=["GET"]),
        Route("/metrics", public.metrics, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(
            SessionMiddleware, secret_key=secret, session_cookie=auth.SESSION_COOKIE,
            max_age=parse_duration(settings.web.session_lifetime), same_site="lax",
            https_only=settings.web.base_url.startswith("https://"),
        ),
    ]
    app = Starlette(
        routes=routes, middleware=middleware,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=_lifespan(engine),
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.templates = templates
    app.state.metrics = Metrics(engine, settings)
    app.state.throttle = auth.LoginThrottle()
    return app


def _lifespan(engine: Engine) -> Callable[[Starlette], Any]:
    """As many threads for the handlers' database work as the pool keeps connections open.

    Starlette's thread pool has 40 threads and the pool 10 connections (more are opened when needed
    and closed when returned): with 16 requests at once, a hundred PostgreSQL sessions a second were
    opened and closed (docs/LOAD.md).  Requests beyond the pool now wait for a thread instead."""
    size = getattr(engine.pool, "size", None)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if callable(size):
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = max(1, size())
        yield

    return lifespan


class AccessLogRedaction(logging.Filter):
    """uvicorn's access log without credentials or customers' data in URLs: unsubscribe tokens
    (they act for a customer), the hooks' `secret` query parameter, and the customer search text
    (`/customers?q=`: what a marketer types to find someone is a phone, an email or a name).

    The path is percent-decoded first (repeatedly: a login redirect's `next=` holds an encoded
    path holding an encoded query), so that the log formatter's masking sees `anna@mail.ru` and
    `+79161234567` rather than `anna%40mail.ru` and `%2B79161234567`; control characters a request
    could smuggle in by decoding (`%0A`: a forged log line) become `?`."""

    _TOKEN = re.compile(r"^/u/[^/?\s]+")
    _SECRET = re.compile(r"([?&]secret=)[^&\s]*")
    _SEARCH = re.compile(r"([?&]q=)[^&\s]*")
    _CONTROL = re.compile(r"[\x00-\x1f\x7f]")

    def _redact(self, path: str) -> str:
        path = self._TOKEN.sub("/u/***", path)
        return self._SEARCH.sub(r"\1***", self._SECRET.sub(r"\1***", path))

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = self._redact(args[2])
            for _ in range(3):
                decoded = unquote_plus(path)
                if decoded == path:
                    break
                path = self._redact(decoded)
            record.args = (*args[:2], self._CONTROL.sub("?", path), *args[3:])
        return True


def redact_access_log() -> None:
    logging.getLogger("uvicorn.access").addFilter(AccessLogRedaction())


def describe_routes(app: Starlette) -> list[dict[str, Any]]:
    """(path, methods) of every route: for docs and the tests' every-route checks."""
    found = []
    for route in app.routes:
        if isinstance(route, Route):
            found.append({"path": route.path, "methods": sorted(route.methods or [])})
    return found
