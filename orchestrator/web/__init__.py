"""The web app (SPEC 11): `create_app(settings)` gives the Starlette application that `serve` runs."""

from __future__ import annotations

from orchestrator.web.app import create_app

__all__ = ["create_app"]
