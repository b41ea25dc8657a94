"""Loyalty campaign orchestrator: who to contact, through which channel, when, and how often."""

__version__ = "0.1.0"
