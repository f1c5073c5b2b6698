"""`pgtape replay`, with where its time goes: for the benchmarks only (no user option does this).

    python -m bench.replay_phases --out PHASES.json [--parallel N] -- replay ARGS...

Runs pgtape's own main() in this process after wrapping, without changing what they do: the
fold (engine.prepare), and per table on its loading thread the CREATE TABLE, the COPY (load_blocks),
the ADD PRIMARY KEY and the COMMIT, then the publishing transaction (sinks.schema._publish). Times
are wall seconds as seen by the client (each statement waits for the server), and for the COPY and
the primary key also the CPU of the server process doing it (/proc, when the server runs here).
`--parallel N` sets replay.sinks.schema.PARALLEL (tables loading at once) for this run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from functools import wraps
from pathlib import Path
from typing import Any, Callable

import psycopg

import pgtape.replay.engine as engine
import pgtape.replay.sinks.load as load
import pgtape.replay.sinks.schema as schema
from pgtape.cli import main as pgtape_main

phases: dict[str, Any] = {"tables": {}}
_lock = threading.Lock()


def _table() -> dict[str, float]:
    name = threading.current_thread().name
    with _lock:
        return phases["tables"].setdefault(name.removeprefix("pgtape load "), {})


def backend_cpu(conn: Any) -> float | None:
    """CPU seconds (user+sys) of the server process behind `conn` so far, if this machine shows it."""
    try:
        fields = Path(f"/proc/{conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, AttributeError, IndexError, ValueError):
        return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _timed(fn: Callable[..., Any], record: Callable[[float], None],
           server: Callable[[float], None] | None = None) -> Callable[..., Any]:
    """`record` hears the wall time of each call; `server`, the CPU time of the server process behind
    the call's first argument (a connection) during it."""
    @wraps(fn)
    def run(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        c = backend_cpu(a[0]) if server is not None else None
        try:
            return fn(*a, **kw)
        finally:
            record(time.perf_counter() - t)
            if server is not None and c is not None and (after := backend_cpu(a[0])) is not None:
                server(after - c)
    return run


def _add(key: str) -> Callable[[float], None]:
    def record(s: float) -> None:
        if threading.current_thread().name.startswith("pgtape load "):
            t = _table()
            t[key] = t.get(key, 0.0) + s
    return record


def _set(key: str) -> Callable[[float], None]:
    def record(s: float) -> None:
        phases[key] = phases.get(key, 0.0) + s
    return record


def install() -> None:
    import pgtape.commands.replay as cmd
    prepare = _timed(engine.prepare, _set("fold"))
    replaced: list[tuple[object, str, object]] = [
        (engine, "prepare", prepare), (cmd, "prepare", prepare),  # imported by name there
        (schema, "create_table", _timed(load.create_table, _add("create"))),
        (schema, "load_blocks", _timed(load.load_blocks, _add("copy"), _add("copy_server_cpu"))),
        (schema, "_publish", _timed(schema._publish, _set("publish"))),
        (schema._ParallelLoad, "run", _timed(schema._ParallelLoad.run, _set("load")))]
    execute, commit = psycopg.Connection.execute, psycopg.Connection.commit

    @wraps(execute)
    def timed_execute(self: psycopg.Connection, query: Any, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        text = query if isinstance(query, str) else ""
        pk = "PRIMARY KEY" in text and text.startswith("ALTER TABLE")
        c = backend_cpu(self) if pk else None
        try:
            return execute(self, query, *a, **kw)
        finally:
            if pk:
                _add("primary_key")(time.perf_counter() - t)
                if c is not None and (after := backend_cpu(self)) is not None:
                    _add("primary_key_server_cpu")(after - c)

    replaced += [(psycopg.Connection, "execute", timed_execute),
                 (psycopg.Connection, "commit", _timed(commit, _add("commit")))]
    for owner, name, value in replaced:  # (setattr: mypy refuses assigning to a module's function)
        setattr(owner, name, value)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay_phases", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="where to write the phases (JSON)")
    p.add_argument("--parallel", type=int, help="replay.sinks.schema.PARALLEL for this run")
    p.add_argument("pgtape_args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    rest = args.pgtape_args[1:] if args.pgtape_args[:1] == ["--"] else args.pgtape_args
    if args.parallel:
        schema.PARALLEL = args.parallel
    phases["parallel"] = schema.PARALLEL
    install()
    t = time.perf_counter()
    code = pgtape_main(rest)
    phases["total_in_process"] = time.perf_counter() - t
    phases["process_cpu"] = time.process_time()
    args.out.write_text(json.dumps(phases, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
