"""Frames out: incremental mp4 / PNG recording (`recording`), and stream timing and prompt schedules
(`timing`: pixel frames ↔ chunks ↔ seconds)."""
