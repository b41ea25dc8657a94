"""Commands for managers' call tasks and management control (SPEC 9): `from orchestrator.cli import app` and decorate."""

from __future__ import annotations
