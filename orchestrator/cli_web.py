"""Commands for the web app and its users (SPEC 11): `serve`, `users add|list|passwd`.

Passwords never appear on the command line (where `ps` and the shell history would keep them): they
are read from a hidden prompt (typed twice), or from standard input with `--password-stdin` (the
first line) for scripts.  They are never printed nor logged.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from orchestrator import console
from orchestrator.cli import ConfigOpt, JsonOpt, app, engine_for, settings_for
from orchestrator.errors import InputError

users_app = typer.Typer(no_args_is_help=True, help="Users of the web app: marketers and managers.")
app.add_typer(users_app, name="users")

PasswordStdinOpt = Annotated[bool, typer.Option(
    "--password-stdin", help="read the password from the first line of standard input (for scripts)")]


def _read_password(from_stdin: bool, *, confirm: bool = True) -> str:
    from orchestrator.users import check_password

    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
        if not password:
            raise InputError("no password on standard input", field="--password-stdin")
        return check_password(password)
    if not sys.stdin.isatty():
        raise InputError("no terminal to ask for the password: pipe it with --password-stdin", field="password")
    import getpass

    password = getpass.getpass("Password: ")
    check_password(password)
    if confirm and getpass.getpass("Repeat the password: ") != password:
        raise InputError("the two passwords differ", field="password")
    return password


@users_app.command("add")
def users_add(
    login: Annotated[str, typer.Argument(help="the login; a manager's is the customers' `manager` value")],
    role: Annotated[str, typer.Option("--role", help="marketer or manager")],
    name: Annotated[Optional[str], typer.Option(help="the name shown in the web app")] = None,
    email: Annotated[Optional[str], typer.Option(help="email (for the morning digest of calls)")] = None,
    password_stdin: PasswordStdinOpt = False,
    config: ConfigOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a user of the web app (the password is asked for, or read with --password-stdin)."""
    from orchestrator.users import add_user, check_login, check_role

    check_login(login)
    check_role(role)
    settings = settings_for(config)
    password = _read_password(password_stdin)
    user = add_user(engine_for(settings), login, role, password, name=name, email=email)
    if as_json:
        console.json_line({k: user[k] for k in ("login", "name", "email", "role")})
    else:
        console.out(f"user {user['login']} ({user['role']}) created")


@users_app.command("list")
def users_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The users of the web app (never their password hashes)."""
    from orchestrator.users import list_users

    rows = list_users(engine_for(settings_for(config)))
    if as_json:
        for user in rows:
            console.json_line({k: user[k] for k in ("login", "name", "email", "role")})
        return
    if not rows:
        console.out("no users yet: orchestrator users add LOGIN --role marketer|manager")
        return
    console.table(["login", "role", "name", "email"], ([u["login"], u["role"], u["name"], u["email"]] for u in rows))


@users_app.command("passwd")
def users_passwd(
    login: Annotated[str, typer.Argument(help="whose password")],
    password_stdin: PasswordStdinOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Set a user's password (their open sessions end)."""
    from orchestrator.errors import NotFound
    from orchestrator.users import get_user, set_password

    engine = engine_for(settings_for(config))
    if get_user(engine, login) is None:
        raise NotFound(f"no user '{login[:80]}'")
    set_password(engine, login, _read_password(password_stdin))
    console.out(f"password of {login} changed; their sessions have ended")


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="web server processes")] = 1,
) -> None:
    """The web app (SPEC 11): campaigns and reports, customers, the task board, unsubscribe, hooks."""
    import uvicorn

    from orchestrator.logs import setup_logging
    from orchestrator.web import create_app
    from orchestrator.web.app import redact_access_log

    settings = settings_for(config)
    setup_logging()
    redact_access_log()
    engine = engine_for(settings)  # opens and migrates the database: errors now, not at the first request
    if workers == 1:
        app_instance = create_app(settings, engine=engine)
        uvicorn.run(app_instance, host=host, port=port, log_config=None, proxy_headers=True,
                    server_header=False, date_header=True)
        return
    # Several processes: each builds its own app from the same settings (uvicorn needs an import string).
    import os

    if settings.path:
        os.environ["ORCHESTRATOR_SETTINGS"] = str(settings.path)
    engine.dispose()
    uvicorn.run("orchestrator.web.factory:app_from_environment", factory=True, host=host, port=port,
                workers=workers, log_config=None, proxy_headers=True, server_header=False)
