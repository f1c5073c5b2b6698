"""pgtape: point-in-time recovery for PostgreSQL tables from a logical-replication tape.

This package holds what capture/, snapshots/ and replay/ share: configuration,
the tape format, PostgreSQL helpers and the command line.
"""

__version__ = "0.1.0"
