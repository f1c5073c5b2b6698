"""Where a replay's result goes, one module each: a recovery schema (`schema.py`), files
(`files.py`), or the live tables, diff and in place (`live.py`); `load.py` (tables and COPY) is what they share.

The recovery schema is loaded into a staging schema, its tables in parallel, and renamed to its name
in one final transaction; a failure or Ctrl-C drops the staging schema, and a process killed mid-way
leaves only a schema named pgtape_incomplete_<hex>. The live-table forms (dry run, in place) run in
one transaction. Either way an interrupted replay leaves nothing half-written under a real name.
"""

from pgtape.replay.sinks.load import create_table, live_relation, load_rows
from pgtape.replay.sinks.files import to_files
from pgtape.replay.sinks.live import TableDiff, diff_live, fk_order
from pgtape.replay.sinks.schema import to_schema

__all__ = ["create_table", "live_relation", "load_rows", "to_files", "TableDiff", "diff_live", "fk_order", "to_schema"]
