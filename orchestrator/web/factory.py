"""`serve --workers N`: each uvicorn worker process builds its app from $ORCHESTRATOR_SETTINGS."""

from __future__ import annotations

from starlette.applications import Starlette


def app_from_environment() -> Starlette:
    from orchestrator.logs import setup_logging
    from orchestrator.settings import load_settings
    from orchestrator.web.app import create_app, redact_access_log

    setup_logging()
    redact_access_log()
    return create_app(load_settings(None))
