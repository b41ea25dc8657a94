"""The contact policy: pure functions, no I/O (consent, caps, quiet hours, zones, decisions)."""
