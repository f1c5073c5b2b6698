"""Capture: stream logical replication changes onto the tape, acknowledging only what is durable."""
