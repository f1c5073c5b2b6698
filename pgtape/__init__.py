"""pgtape: point-in-time recovery for PostgreSQL tables from a logical-replication tape.

Its layers, lowest first: the core modules here, the tape (pgtape/tape), snapshots, capture,
replay, verification, the command line (docs/ARCHITECTURE.md, "Layers"; `make lint-imports`).
"""

__version__ = "0.1.0"
