"""Tiny random-weight files in the real layouts, for tests and smoke runs (seconds, no downloads)."""
