"""Logins, roles and CSRF protection of the web app.

* **Session**: Starlette's signed cookie (itsdangerous, HMAC-SHA1 over the JSON, with a
  timestamp): `HttpOnly`, `SameSite=Lax`, `Secure` when `[web] base_url` is https, and a
  `Max-Age` of `[web] session_lifetime` renewed on every page (a login lasts that long without
  activity).  The key is derived from `[general] secret_key`.  The cookie holds the login, a
  fingerprint of the user's password hash (changing the password with `users passwd` logs out every
  session of that user), the CSRF token and pending flash messages; the user is read from the database
  on every request, so a deleted user is out at once.  Logging out ends every session of the user,
  on every browser (the fingerprint also covers `users.updated_at`, which the logout moves): the
  server keeps no list of cookies, and a copied cookie must not outlive the logout.
* **Roles**: `marketer` sees everything; `manager` sees their own tasks, their own control figures
  and the cards of their own clients.  A marketer-only page answers 403 to a manager; a task or a
  customer that is not theirs answers 404 (its existence is not revealed).
* **CSRF**: a random token bound to the session (created with the session, renewed at login) is put
  in every form as the hidden field `csrf`; every POST except the public endpoints (one-click
  unsubscribe, gateway hooks) is refused with 403 unless the field equals the session's token
  (constant-time comparison).  The login form is protected too (no login CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time as clock
from collections import deque
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from orchestrator.users import authenticate, end_sessions, get_user

SESSION_COOKIE = "orchestrator_session"
CSRF_FIELD = "csrf"
MAX_FORM_BYTES = 256 * 1024

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]


def session_secret(secret_key: str) -> str | None:
    """The key of session cookies, derived from the workspace secret (None when it is empty)."""
    if not secret_key:
        return None
    return hmac.new(secret_key.encode("utf-8"), b"orchestrator-web-session-v1", hashlib.sha256).hexdigest()


# --- CSRF --------------------------------------------------------------------------------------


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_valid(request: Request, form: FormData) -> bool:
    expected = request.session.get("csrf")
    given = form.get(CSRF_FIELD)
    if not isinstance(expected, str) or not isinstance(given, str) or not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


async def read_form(request: Request) -> FormData:
    """The POSTed form, size-bounded; 403 when its CSRF token is missing or wrong."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
        raise HTTPException(413, "The form is too large.")
    try:
        form = await request.form(max_files=0, max_fields=100, max_part_size=MAX_FORM_BYTES)
    except Exception:  # noqa: BLE001 - a malformed body is the client's mistake
        raise HTTPException(400, "The form could not be read.") from None
    if not csrf_valid(request, form):
        raise HTTPException(403, "This form has expired or did not come from this site. Reload the page and try again.")
    return form


# --- flash messages ------------------------------------------------------------------------------


def flash(request: Request, text: str, kind: str = "ok") -> None:
    messages = list(request.session.get("flash") or [])[-4:]
    messages.append([kind, text[:500]])
    request.session["flash"] = messages


def pop_flash(request: Request) -> list[list[str]]:
    if "flash" not in request.session:
        return []
    return list(request.session.pop("flash") or [])


# --- who is asking ---------------------------------------------------------------------------------


async def current_user(request: Request) -> dict[str, Any] | None:
    if hasattr(request.state, "user"):
        return request.state.user
    user = None
    login = request.session.get("login")
    if isinstance(login, str) and login:
        found = await run_in_threadpool(get_user, request.app.state.engine, login)
        if found is not None and hmac.compare_digest(str(request.session.get("key", "")), found["session_key"]):
            user = found
        else:
            # The user is gone or changed their password: this session ends.
            request.session.pop("login", None)
            request.session.pop("key", None)
    request.state.user = user
    return user


def safe_next(target: str | None, default: str = "/") -> str:
    """Only a path on this site: never `//evil.example` or `https://...` (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if any(ord(ch) < 32 for ch in target):
        return default
    return target


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


def requires(*roles: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A page for logged-in users of these roles: others are sent to the login page, or get 403."""

    def decorate(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            user = await current_user(request)
            if user is None:
                if request.method != "GET":
                    raise HTTPException(403, "Your session has ended. Log in again.")
                return login_redirect(request)
            if roles and user["role"] not in roles:
                raise HTTPException(403, "This page is for marketers.")
            return await handler(request, user)

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return decorate


# --- login attempts ----------------------------------------------------------------------------------


class LoginThrottle:
    """At most `limit` failed logins per login name and per client address in `window` seconds."""

    def __init__(self, limit: int = 10, window: int = 900) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _keys(self, login: str, address: str) -> tuple[str, str]:
        return f"login:{login.lower()[:64]}", f"addr:{address}"

    def blocked_for(self, login: str, address: str) -> int:
        """Seconds until another attempt is allowed (0: allowed now)."""
        now = clock.monotonic()
        wait = 0.0
        with self._lock:
            for key in self._keys(login, address):
                times = self._failures.get(key)
                if not times:
                    continue
                while times and times[0] <= now - self.window:
                    times.popleft()
                if len(times) >= self.limit:
                    wait = max(wait, times[0] + self.window - now)
        return int(wait) + (1 if wait else 0)

    def failed(self, login: str, address: str) -> None:
        now = clock.monotonic()
        with self._lock:
            if len(self._failures) > 100_000:
                self._failures.clear()
            for key in self._keys(login, address):
                self._failures.setdefault(key, deque(maxlen=self.limit * 2)).append(now)

    def succeeded(self, login: str) -> None:
        with self._lock:
            self._failures.pop(self._keys(login, "")[0], None)


async def log_in(request: Request, login: str, password: str) -> dict[str, Any] | None:
    user = await run_in_threadpool(authenticate, request.app.state.engine, login, password)
    if user is None:
        return None
    request.session.clear()  # a fresh session: nothing carried over from before the login
    request.session["login"] = user["login"]
    request.session["key"] = user["session_key"]
    request.session["csrf"] = secrets.token_urlsafe(32)
    request.state.user = user
    return user


async def log_out(request: Request) -> None:
    """Ends the session for good: the cookie is emptied, and every cookie issued to this user
    before (a copy kept by someone else, another browser) stops working (users.end_sessions)."""
    user = await current_user(request)
    if user is not None:
        await run_in_threadpool(end_sessions, request.app.state.engine, user["login"])
    request.session.clear()
    request.state.user = None
