"""Users of the web app (SPEC 11): marketers and account managers, with hashed passwords.

Passwords are hashed with the standard library's `hashlib.scrypt` (memory-hard, no extra
dependency) and a random 16-byte salt per user; the stored text is
``scrypt$<N>$<r>$<p>$<salt>$<hash>`` (base64), so the cost can be raised later without
invalidating existing hashes.  A manager's login is the `manager` value of customers and call tasks:
that is how the web app knows whose tasks are whose.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time as clock
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orchestrator.errors import InputError, NotFound
from orchestrator.storage.engine import write_transaction
from orchestrator.storage.schema import USER_ROLES, users

ROLES = USER_ROLES
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_LOGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

# scrypt cost: N=2^15, r=8, p=1 uses 32 MiB and about 0.1 s per hash on a laptop.
_N, _R, _P = 2**15, 8, 1
_DKLEN = 32
_SALT_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * r * n + (1 << 20)
    )


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, _N, _R, _P, _DKLEN)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a stored hash; False for a malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p), len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# A hash to check against when the login does not exist, so that a wrong login costs the same
# time as a wrong password (no way to probe which logins exist).
_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_hex(16))
    return _DUMMY_HASH


def check_login(login: str) -> str:
    login = (login or "").strip()
    if not _LOGIN.fullmatch(login):
        raise InputError(
            f"'{login[:80]}' is not a usable login (1-64 characters: letters, digits, . _ @ -; "
            "a manager's login is the `manager` column of the customers)", field="LOGIN"
        )
    return login


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InputError(f"'{role}' is not a role ({', '.join(ROLES)})", field="--role")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InputError(f"the password is too short (at least {MIN_PASSWORD} characters)", field="password")
    if len(password) > MAX_PASSWORD:
        raise InputError(f"the password is too long (at most {MAX_PASSWORD} characters)", field="password")
    if password != password.strip():
        raise InputError("the password starts or ends with a space (a copy-paste slip?)", field="password")
    return password


def _check_email(email: str | None) -> str | None:
    if not email:
        return None
    from orchestrator.normalize import normalize_email

    try:
        return normalize_email(email)
    except ValueError as error:
        raise InputError(f"'{email[:120]}' is not an email address: {error}", field="--email") from None


def _record(row: Any) -> dict[str, Any]:
    return {"login": row.login, "name": row.name, "email": row.email, "role": row.role,
            "created_at": row.created_at, "updated_at": row.updated_at}


def add_user(
    engine: Engine, login: str, role: str, password: str, *, name: str | None = None, email: str | None = None
) -> dict[str, Any]:
    login = check_login(login)
    check_role(role)
    check_password(password)
    email = _check_email(email)
    name = (name or "").strip()[:200] or None
    password_hash = hash_password(password)
    now = int(clock.time())
    with write_transaction(engine) as conn:
        exists = conn.execute(sa.select(users.c.login).where(users.c.login == login)).first()
        if exists is not None:
            raise InputError(f"a user '{login}' already exists (use `users passwd` to change the password)", field="LOGIN")
        conn.execute(users.insert().values(
            login=login, name=name, email=email, role=role, password_hash=password_hash, created_at=now, updated_at=now,
        ))
    return {"login": login, "name": name, "email": email, "role": role, "created_at": now, "updated_at": now}


def set_password(engine: Engine, login: str, password: str) -> None:
    check_password(password)
    password_hash = hash_password(password)
    with write_transaction(engine) as conn:
        result = conn.execute(
            users.update().where(users.c.login == login).values(password_hash=password_hash, updated_at=int(clock.time()))
        )
        if not result.rowcount:
            raise NotFound(f"no user '{login}'")


def list_users(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(users).order_by(users.c.role, users.c.login)).all()
    return [_record(row) for row in rows]


def get_user(engine: Engine, login: str) -> dict[str, Any] | None:
    """The user with `session_key`: a fingerprint of the password hash and of `updated_at`, which
    changes with the password and at every logout (`end_sessions`): a session cookie carries the
    key it was issued with and is honoured only while the key is the same."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(users).where(users.c.login == login)).first()
    if row is None:
        return None
    record = _record(row)
    fingerprint = f"{row.password_hash}\n{row.updated_at}".encode("utf-8")
    record["session_key"] = hashlib.sha256(fingerprint).hexdigest()[:32]
    return record


def end_sessions(engine: Engine, login: str) -> None:
    """End every session of this user (logging out).

    Sessions are signed cookies the server keeps no list of, so a copy of a cookie taken before
    the logout would otherwise stay valid (its lifetime is renewed on every page).  Moving
    `updated_at` (always forward, also twice in one second) changes the user's session key: every
    cookie issued before now is refused — on the user's other browsers too.
    """
    now = int(clock.time())
    with write_transaction(engine) as conn:
        conn.execute(users.update().where(users.c.login == login).values(
            updated_at=sa.case((users.c.updated_at >= now, users.c.updated_at + 1), else_=now)))


def authenticate(engine: Engine, login: str, password: str) -> dict[str, Any] | None:
    """The user when the password is right; None otherwise (same cost for an unknown login)."""
    login = (login or "").strip()
    if not login or len(login) > 64 or len(password) > MAX_PASSWORD:
        verify_password(password[:MAX_PASSWORD], _dummy_hash())
        return None
    with engine.connect() as conn:
        row = conn.execute(sa.select(users.c.password_hash).where(users.c.login == login)).first()
    if row is None:
        verify_password(password, _dummy_hash())
        return None
    if not verify_password(password, row.password_hash):
        return None
    return get_user(engine, login)
