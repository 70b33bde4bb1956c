"""Textual app tests: Pilot-driven views and SVG snapshots (snapshots in __snapshots__/<module>/)."""
