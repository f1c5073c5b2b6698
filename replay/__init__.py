"""Replay: rebuild table state at a target from a base plus the tape."""
