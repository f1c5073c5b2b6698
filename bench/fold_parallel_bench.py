"""Would folding the tape per table in parallel pay? (issue 16, "parallelism where it pays")

    python -m bench.fold_parallel_bench ARCHIVE --tables public.payments,public.orders,public.tickets

Replay folds every table in one pass over the tape, on one core (the interpreter lock). The
alternative measured here: one process per group of tables, each reading and decoding the whole
tape and folding only its own tables (engine.prepare with those tables), as a parallel replay
would have to (the tape interleaves all tables; decoding is not split by table). Per run, after a
warm-up read (the archive in the page cache):
  - one process folding all tables (what replay does);
  - N processes at once, the tables dealt round-robin (--processes, default: the CPU count),
    timed from the first start to the last end;
  - each table alone in one process, one after another (what each part costs by itself).
Wall seconds, best of --runs, interleaved; fold only (engine.prepare to the latest), no loading.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

from pgtape.replay import engine
from pgtape.replay.target import Target
from pgtape.tape.archive import Archive


def fold(archive: str, tables: list[str]) -> tuple[int, float]:
    t = time.perf_counter()
    with engine.prepare(Archive.existing(Path(archive)), tables, Target("latest")) as plan:
        return plan.changes, time.perf_counter() - t


def _fold_in_child(archive: str, tables: list[str]) -> None:
    fold(archive, tables)


def in_parallel(archive: str, groups: list[list[str]]) -> float:
    ctx = multiprocessing.get_context("fork")
    t = time.perf_counter()
    procs = [ctx.Process(target=_fold_in_child, args=(archive, g)) for g in groups]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a fold process exited {p.exitcode}")
    return time.perf_counter() - t


def alone(archive: str, tables: list[str]) -> float:
    """In a child too, so every measure pays the same process start."""
    return in_parallel(archive, [tables])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archive")
    ap.add_argument("--tables", required=True)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tables = args.tables.split(",")
    groups = [tables[i::args.processes] for i in range(min(args.processes, len(tables)))]
    changes, _ = fold(args.archive, tables)  # warm-up: the archive read once into the page cache
    one: list[float] = []
    par: list[float] = []
    each: dict[str, list[float]] = {t: [] for t in tables}
    for run in range(args.runs):
        one.append(alone(args.archive, tables))
        par.append(in_parallel(args.archive, groups))
        for t in tables:
            each[t].append(alone(args.archive, [t]))
        print(f"run {run + 1}: one process {one[-1]:.2f}s, {len(groups)} processes {par[-1]:.2f}s, "
              + ", ".join(f"{t} alone {v[-1]:.2f}s" for t, v in each.items()), file=sys.stderr, flush=True)
    print(f"fold of {changes:,} changes, {len(tables)} tables (best of {args.runs}; load average "
          f"{os.getloadavg()[0]:.1f}): one process {min(one):.2f}s; {len(groups)} processes "
          f"({' | '.join(','.join(g) for g in groups)}) {min(par):.2f}s: speed-up {min(one) / min(par):.2f}x")
    print("  each table alone: " + ", ".join(f"{t} {min(v):.2f}s" for t, v in each.items())
          + f"; sum {sum(min(v) for v in each.values()):.2f}s")
    print(f"  all runs (s): one {', '.join(f'{x:.2f}' for x in one)}; parallel {', '.join(f'{x:.2f}' for x in par)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
