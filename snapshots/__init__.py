"""Snapshots: exact, consistent bases of the captured tables."""
