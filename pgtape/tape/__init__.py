"""The tape: compressed, checksummed, append-only segment files of captured changes.

records  - what a tape holds (msgspec structs)
frames   - how records are framed, compressed and checksummed (and encrypted) on disk
crypto   - encryption at rest: which key a file uses, sealed metadata, key errors
segment  - one segment file: append, repair a torn tail, seal; read and verify
archive  - the archive directory: identity, generations, the ordered list of segments
audit    - the audit trail: one checksummed JSON line per audited operation (audit/audit.log)
The format is specified in docs/FORMAT.md; bump FORMAT_VERSION on any change to it.
"""

FORMAT_VERSION = 3
