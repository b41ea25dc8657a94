"""Commands for the web app and its users (SPEC 11): `from orchestrator.cli import app` and decorate."""

from __future__ import annotations
