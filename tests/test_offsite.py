"""The offsite copy (issue 15) against a real PostgreSQL and the suite's own SeaweedFS (tests/conftest.py:
s3_server / s3_url; never a mock of S3): upload, resume after kill -9, disaster recovery from the bucket
alone (replay from s3:// and from a pulled directory equals the live state), a flipped remote byte, the
store down and back while capture goes on."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from conftest import (ROOT, capture_to_now, clean_env, confirmed_flush, current_lsn, run_pgtape, spawn_pgtape,
                      stop_process, wait_until)
from pgtape.lsn import parse_lsn
from pgtape.offsite.upload import Uploader
from pgtape.snapshots import catalog
from pgtape.tape.archive import Archive
from pgtape.storage import s3
from pgtape.storage.s3 import S3Storage
from testkit.seaweed import SeaweedS3

TABLE = "public.payments"
DDL = "CREATE TABLE payments (id int PRIMARY KEY, amount numeric(12,2), note text)"


def _config(tmp_path: Path, url: str, interval: str = "1s", segment_size: str = "8kB") -> Path:
    p = tmp_path / "pgtape.toml"
    p.write_text(f'[capture]\nsegment_size = "{segment_size}"\n\n[offsite]\nurl = "{url}"\ninterval = "{interval}"\n')
    return p


def _workload(dsn: str, start: int, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for i in range(start, start + count):
            c.execute("INSERT INTO payments VALUES (%s, %s, %s)", (i, f"{i}.10", "x" * (i % 300)))
            if i % 7 == 0:
                c.execute("UPDATE payments SET amount = amount + 1 WHERE id = %s", (i - 3,))
            if i % 11 == 0:
                c.execute("DELETE FROM payments WHERE id = %s", (i - 5,))


def _live(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as c:
        return [f"{r[0]}\t{r[1]}\t{r[2]}" for r in c.execute("SELECT id, amount, note FROM payments ORDER BY id")]


def _replayed(out: Path) -> list[str]:
    """The rows of `replay --output DIR --format csv`, as id<TAB>amount<TAB>note, sorted by id."""
    files = list(out.glob("*.csv"))
    assert len(files) == 1, files
    with open(files[0], newline="") as f:
        parsed = list(csv.reader(f))[1:]
    return [f"{a}\t{b}\t{c}" for a, b, c in sorted(parsed, key=lambda r: int(r[0]))]


def _local_files(archive: Path) -> dict[str, bytes]:
    skip = ("capture.lock", "snapshot.lock", "audit.lock", "offsite.lock", "OFFSITE.json")
    return {str(p.relative_to(archive)): p.read_bytes() for p in archive.rglob("*")
            if p.is_file() and p.name not in skip and not p.name.endswith(".tmp")}


def _remote_files(url: str) -> dict[str, bytes]:
    s = S3Storage(url)
    return {k: s.read(k) for k in s.list_tree("")}


def _setup(dsn: str, tmp_path: Path, url: str, **kw: str) -> tuple[Path, list[str]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(DDL)
    archive = tmp_path / "archive"
    cfg = _config(tmp_path, url, **kw)
    return archive, ["--config", str(cfg), "--dsn", dsn, "--tables", TABLE]


def test_push_then_recover_from_the_bucket_alone(dsn: str, tmp_path: Path, s3_url: str) -> None:
    archive, cli = _setup(dsn, tmp_path, s3_url)
    run_pgtape("init", *cli, "--archive", str(archive), check=True)
    _workload(dsn, 1, 600)
    capture_to_now(dsn, archive, *cli)
    r = run_pgtape("push", *cli, "--archive", str(archive), "--json", check=True)
    pushed = json.loads(r.stdout)
    assert pushed["uploaded"] and pushed["bytes"] > 0
    assert any(k.endswith(".tape") for k in pushed["uploaded"]), "several sealed segments expected"
    # Byte for byte: the bucket holds exactly the local files (same keys).
    assert _remote_files(s3_url) == _local_files(archive)
    again = json.loads(run_pgtape("push", *cli, "--archive", str(archive), "--json", check=True).stdout)
    assert again["uploaded"] == [] and again["bytes"] == 0  # idempotent

    live = _live(dsn)
    # Disaster: the local archive is gone. Every reader works from the bucket alone.
    archive.rename(tmp_path / "lost")
    for cmd in (["verify"], ["log"], ["snapshots"], ["status", "--json"]):
        r = run_pgtape(*cmd, *cli, "--archive", s3_url)
        assert r.returncode == 0, (cmd, r.stderr)
    out = tmp_path / "from_bucket"
    run_pgtape("replay", *cli, "--archive", s3_url, "--latest", "--output", str(out), "--format", "csv", check=True)
    assert _replayed(out) == live
    # pull: back to disk, then a local archive like any other.
    pulled = tmp_path / "pulled"
    run_pgtape("pull", s3_url, str(pulled), check=True)
    entries = {k for k in _local_files(pulled) if k.startswith("audit/offsite/")}
    assert len(entries) == 3  # verify, log and replay on the bucket each left an entry object (tests/test_audit.py)
    assert {k: v for k, v in _local_files(pulled).items() if k not in entries} == _local_files(tmp_path / "lost")
    run_pgtape("verify", *cli, "--archive", str(pulled), check=True)
    out2 = tmp_path / "from_pulled"
    run_pgtape("replay", *cli, "--archive", str(pulled), "--latest", "--output", str(out2), "--format", "csv",
               check=True)
    assert _replayed(out2) == live


def test_a_flipped_byte_in_the_bucket_is_named_by_verify(dsn: str, tmp_path: Path, s3_url: str) -> None:
    archive, cli = _setup(dsn, tmp_path, s3_url)
    run_pgtape("init", *cli, "--archive", str(archive), check=True)
    _workload(dsn, 1, 300)
    capture_to_now(dsn, archive, *cli)
    run_pgtape("push", *cli, "--archive", str(archive), check=True)
    s = S3Storage(s3_url)
    seg = sorted(k for k in s.list_tree("") if k.endswith(".tape"))[0]
    data = bytearray(s.read(seg))
    data[len(data) // 2] ^= 0x01
    s.write_atomic(seg, bytes(data))
    r = run_pgtape("verify", *cli, "--archive", s3_url)
    assert r.returncode != 0
    assert f"{s3_url}/{seg}" in r.stdout + r.stderr, r.stdout + r.stderr


def _state_objects(archive: Path) -> int:
    try:
        return len(json.loads((archive / "OFFSITE.json").read_text())["doc"]["objects"])
    except (FileNotFoundError, ValueError):
        return 0


def test_kill_9_mid_push_then_resume_sends_nothing_twice(dsn: str, tmp_path: Path, s3_url: str) -> None:
    archive, cli = _setup(dsn, tmp_path, s3_url, segment_size="4kB")
    no_offsite = tmp_path / "capture.toml"  # capture alone, so push has everything to do
    no_offsite.write_text('[capture]\nsegment_size = "4kB"\nfsync_interval = "1ms"\n')
    capture_cli = ["--config", str(no_offsite), *cli[2:]]
    run_pgtape("init", *capture_cli, "--archive", str(archive), check=True)
    cap = spawn_pgtape("capture", *capture_cli, "--archive", str(archive), log=tmp_path / "capture.log")
    try:  # one frame per transaction or so, incompressible rows: a segment every few transactions
        # (once capture streams: a backlog read at once would go into a few large group commits)
        wait_until("capture to stream", lambda: b"capturing" in (tmp_path / "capture.log").read_bytes(), 60)
        with psycopg.connect(dsn, autocommit=True) as c:
            for i in range(1, 2000):
                c.execute("INSERT INTO payments VALUES (%s, %s, %s)", (i, f"{i}.10", os.urandom(200).hex()))
                time.sleep(0.001)  # paced, so capture keeps up whatever the machine's load
        end = parse_lsn(current_lsn(dsn))
        wait_until("capture to confirm the workload", lambda: confirmed_flush(dsn) >= end, 60)
    finally:
        stop_process(cap)
    local = _local_files(archive)
    assert len(local) > 40, f"many objects expected, not {len(local)}"
    env = clean_env()
    proc = subprocess.Popen([sys.executable, "-m", "pgtape", "push", *cli, "--archive", str(archive)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # (the bucket, not OFFSITE.json: the uploader writes that at most once a second within a pass)
        wait_until("push to upload a few objects", lambda: len(S3Storage(s3_url).list_tree("")) >= 3, 60,
                   interval=0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_process(proc, signal.SIGKILL)
    before = _remote_files(s3_url)  # complete objects (a PUT is atomic): whatever the kill left
    assert before and len(before) < len(local), f"push finished ({len(before)} objects) before it was killed"
    r = json.loads(run_pgtape("push", *cli, "--archive", str(archive), "--json", check=True).stdout)
    complete = {k for k, v in before.items() if local.get(k) == v}
    assert not complete & set(r["uploaded"]), "an object already complete in the bucket was uploaded again"
    assert set(r["uploaded"]) | set(r["already_there"]) | complete >= set(local)
    assert _remote_files(s3_url) == local


def test_store_down_and_back_while_capture_runs(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = SeaweedS3(tmp_path / "weed")  # its own: this test stops it
    try:
        server.start()
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        server.create_bucket("downandback")
        url = "s3://downandback/a"
        archive, cli = _setup(dsn, tmp_path, url, segment_size="16kB")
        run_pgtape("init", *cli, "--archive", str(archive), check=True)
        cap = spawn_pgtape("capture", *cli, "--archive", str(archive), log=tmp_path / "capture.log")
        try:
            def offsite() -> dict[str, Any]:
                r = run_pgtape("status", *cli, "--archive", str(archive), "--json")
                doc = json.loads(r.stdout)
                return doc["offsite"] or {}

            _workload(dsn, 1, 300)
            wait_until("the offsite copy to catch up", lambda: offsite().get("lag_bytes") == 0
                      , 60, interval=0.5)
            server.stop()
            _workload(dsn, 301, 300)
            end = current_lsn(dsn)
            # Capture keeps capturing: the slot confirms what the tape holds durably, bucket or not.
            wait_until("capture to confirm the new changes", lambda: confirmed_flush(dsn) >= parse_lsn(end), 60)
            first = wait_until("a growing offsite lag", lambda: (o := offsite()).get("lag_bytes") and o, 30, 0.5)
            assert first["last_error"] or first["lag_bytes"] > 0
            _workload(dsn, 601, 100)
            wait_until("capture to confirm more", lambda: confirmed_flush(dsn) >= parse_lsn(current_lsn(dsn)) - 1, 60)
            later = offsite()
            assert later["lag_bytes"] >= first["lag_bytes"], (first, later)
            assert cap.poll() is None, "capture stopped while the store was down"
            server.start()
            wait_until("uploads to resume and catch up", lambda: offsite().get("lag_bytes") == 0
                       and not offsite().get("last_error"), 90, interval=1)
        finally:
            stop_process(cap)
        assert cap.returncode == 0, (tmp_path / "capture.log").read_text()[-3000:]
        run_pgtape("push", *cli, "--archive", str(archive), check=True)
        assert _remote_files(url) == _local_files(archive)  # nothing lost
        out = tmp_path / "out"
        run_pgtape("replay", *cli, "--archive", url, "--latest", "--output", str(out), "--format", "csv", check=True)
        assert _replayed(out) == _live(dsn)
    finally:
        server.stop()


def _batch(dsn: str, archive: Path, cli: list[str], n: int) -> None:
    """Incompressible rows, captured: each batch overfills an 8 kB segment."""
    with psycopg.connect(dsn, autocommit=True) as c:
        lo = 100_000 + n * 300
        c.execute("INSERT INTO payments SELECT g, g, md5(random()::text) || md5(random()::text) "
                  "FROM generate_series(%s::int, %s::int) g", (lo, lo + 299))
        c.execute("UPDATE payments SET amount = amount + 1 WHERE id %% 7 = %s", (n % 7,))
    capture_to_now(dsn, archive, *cli)


def _snapshot(cli: list[str], archive: Path) -> str:
    r = run_pgtape("snapshot", *cli, "--archive", str(archive), "--json", check=True)
    return str(json.loads(r.stdout)["id"])


def _expire_all_but(archive: Path, keep: set[str]) -> None:
    a = Archive(archive)
    past = time.time_ns() // 1000 - 1_000_000
    for r in catalog.load_all(a):
        if r.id not in keep:
            catalog.save(a, msgspec.structs.replace(r, expires_at=past))


def _data(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not k.startswith("audit/")}


def test_prune_applies_to_the_offsite_copy_and_keep_local_unsent(dsn: str, tmp_path: Path, s3_url: str) -> None:
    archive, cli = _setup(dsn, tmp_path, s3_url)
    run_pgtape("init", *cli, "--archive", str(archive), check=True)
    for n in range(2):
        _batch(dsn, archive, cli, n)
    s1 = _snapshot(cli, archive)
    for n in range(2, 4):
        _batch(dsn, archive, cli, n)
    s2 = _snapshot(cli, archive)
    _batch(dsn, archive, cli, 4)
    run_pgtape("push", *cli, "--archive", str(archive), check=True)
    before = set(_remote_files(s3_url))
    _expire_all_but(archive, {s2})
    run_pgtape("push", *cli, "--archive", str(archive), check=True)
    r = json.loads(run_pgtape("prune", *cli, "--archive", str(archive), "--json", check=True).stdout)
    assert r["segments"] and {s["id"] for s in r["snapshots"]} >= {s1}
    remote = _remote_files(s3_url)
    assert set(remote) - {"PRUNED.json"} < before, "prune deleted nothing offsite"
    assert not any(s1 in k for k in remote)
    run_pgtape("push", *cli, "--archive", str(archive), check=True)  # PRUNED.json is the same both sides
    assert _data(_remote_files(s3_url)) == _data(_local_files(archive))
    live = _live(dsn)
    run_pgtape("verify", *cli, "--archive", s3_url, check=True)

    # keep_local = "unsent": locally only the newest base and what is not offsite yet.
    s3 = _snapshot(cli, archive)
    _batch(dsn, archive, cli, 5)
    run_pgtape("push", *cli, "--archive", str(archive), check=True)
    _batch(dsn, archive, cli, 6)  # not pushed: stays locally
    cfg = Path(cli[1])
    cfg.write_text(cfg.read_text() + 'keep_local = "unsent"\n')
    run_pgtape("prune", *cli, "--archive", str(archive), check=True)
    local = _local_files(archive)
    assert not any(s2 in k for k in local) and any(s3 in k for k in local)
    remote = _remote_files(s3_url)
    assert any(s2 in k for k in remote), "the bucket keeps what retention keeps"
    run_pgtape("verify", *cli, "--archive", str(archive), check=True)
    run_pgtape("verify", *cli, "--archive", s3_url, check=True)
    live = _live(dsn)
    out = tmp_path / "local_replay"
    run_pgtape("replay", *cli, "--archive", str(archive), "--latest", "--output", str(out), "--format", "csv",
               check=True)
    assert _replayed(out) == live
    run_pgtape("push", *cli, "--archive", str(archive), check=True)
    out2 = tmp_path / "remote_replay"
    run_pgtape("replay", *cli, "--archive", s3_url, "--latest", "--output", str(out2), "--format", "csv", check=True)
    assert _replayed(out2) == live


def _modified(url: str) -> dict[str, tuple[str, object]]:
    """key -> (ETag, LastModified) of every object: an object uploaded again gets a new LastModified."""
    s = S3Storage(url)
    out: dict[str, tuple[str, object]] = {}
    for page in s.client.get_paginator("list_objects_v2").paginate(Bucket=s.bucket, Prefix=s.prefix + "/"):
        for o in page.get("Contents", []):
            out[o["Key"][len(s.prefix) + 1:]] = (o["ETag"], o["LastModified"])
    return out


def _uploaders(archive: Path) -> list[int]:
    """Live uploader processes (pgtape.offsite.worker) of this archive."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"pgtape.offsite.worker" in cmd and any(str(archive).encode() in a for a in cmd) and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_kill_9_of_capture_mid_upload_then_resume(dsn: str, tmp_path: Path, s3_url: str) -> None:
    archive, cli = _setup(dsn, tmp_path, s3_url, segment_size="4kB")
    cfg = Path(cli[1])
    cfg.write_text(cfg.read_text().replace("[capture]\n", '[capture]\nfsync_interval = "1ms"\n'))
    run_pgtape("init", *cli, "--archive", str(archive), check=True)
    cap = spawn_pgtape("capture", *cli, "--archive", str(archive), log=tmp_path / "capture.log")
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            for i in range(1, 1500):
                c.execute("INSERT INTO payments VALUES (%s, %s, %s)", (i, f"{i}.10", os.urandom(200).hex()))
                if i == 1000:
                    wait_until("capture to upload sealed segments", lambda: _state_objects(archive) >= 8, 60, 0.01)
                    assert _uploaders(archive), "capture started no uploader process"
                    cap.send_signal(signal.SIGKILL)  # mid-workload, with uploads going on
                    cap.wait(10)
                    # Its uploader dies with it (parent-death signal): no orphan uploading behind a new capture.
                    wait_until("the uploader to die with capture", lambda: not _uploaders(archive), 10, 0.05)
    finally:
        stop_process(cap, signal.SIGKILL)
    complete = {k: v for k, v in _modified(s3_url).items() if k.endswith((".tape", ".snap"))}
    assert complete, "nothing was uploaded before the kill"
    capture_to_now(dsn, archive, *cli)  # repairs the torn tail, captures the rest; its thread uploads too
    run_pgtape("push", *cli, "--archive", str(archive), check=True)
    after = _modified(s3_url)
    assert all(after[k] == v for k, v in complete.items()), "a complete object was uploaded again"
    assert _remote_files(s3_url) == _local_files(archive)
    out = tmp_path / "out"
    run_pgtape("replay", *cli, "--archive", s3_url, "--latest", "--output", str(out), "--format", "csv", check=True)
    assert _replayed(out) == _live(dsn)


def _capture_only(tmp_path: Path, cli: list[str], segment_size: str = "8kB") -> list[str]:
    """The same options with a configuration without [offsite]: capture alone, push does the uploads."""
    cfg = tmp_path / "capture.toml"
    cfg.write_text(f'[capture]\nsegment_size = "{segment_size}"\n')
    return ["--config", str(cfg), *cli[2:]]


def test_an_open_segment_left_beside_its_sealed_one_is_superseded(dsn: str, tmp_path: Path, s3_url: str) -> None:
    archive, cli = _setup(dsn, tmp_path, s3_url)
    capture_cli = _capture_only(tmp_path, cli)
    run_pgtape("init", *capture_cli, "--archive", str(archive), check=True)
    _workload(dsn, 1, 5)  # well under a segment: the tape stays open
    capture_to_now(dsn, archive, *capture_cli)
    run_pgtape("push", *cli, "--archive", str(archive), check=True)
    s = S3Storage(s3_url)
    opened = [k for k in s.list_tree("") if k.endswith(".tape.open")]
    assert len(opened) == 1, opened
    stale = s.read(opened[0])
    _batch(dsn, archive, capture_cli, 0)  # overfills it: sealed, and more after it
    r = json.loads(run_pgtape("push", *cli, "--archive", str(archive), "--json", check=True).stdout)
    assert opened[0] in r["deleted"]
    start = opened[0].rsplit("/", 1)[1].split(".")[0]
    assert any(k.rsplit("/", 1)[-1].startswith(start + "-") for k in s.list_tree("")), "not sealed"
    # As after a kill between the sealed segment's upload and the open one's delete: both in the bucket.
    s.write_atomic(opened[0], stale)
    live = _live(dsn)
    r2 = run_pgtape("verify", *cli, "--archive", s3_url)
    assert r2.returncode == 0 and "overlap" not in r2.stdout + r2.stderr, r2.stdout + r2.stderr
    out = tmp_path / "from_bucket"
    run_pgtape("replay", *cli, "--archive", s3_url, "--latest", "--output", str(out), "--format", "csv", check=True)
    assert _replayed(out) == live
    pulled = tmp_path / "pulled"  # a pulled archive holds both too: read the same way
    run_pgtape("pull", s3_url, str(pulled), check=True)
    run_pgtape("verify", *cli, "--archive", str(pulled), check=True)
    out2 = tmp_path / "from_pulled"
    run_pgtape("replay", *cli, "--archive", str(pulled), "--latest", "--output", str(out2), "--format", "csv",
               check=True)
    assert _replayed(out2) == live


def test_multipart_objects_are_not_sent_again_after_a_lost_state(dsn: str, tmp_path: Path, s3_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    archive, cli = _setup(dsn, tmp_path, s3_url)
    capture_cli = _capture_only(tmp_path, cli)
    run_pgtape("init", *capture_cli, "--archive", str(archive), check=True)
    _batch(dsn, archive, capture_cli, 0)
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 1024)  # every sealed segment goes up in parts
    first = Uploader(Archive(archive), S3Storage(s3_url), 1.0).run_pass(force_open=True)
    sealed = [k for k in first.uploaded if k.endswith(".tape")]
    assert sealed
    client = S3Storage(s3_url)
    stored = {k: client.client.head_object(Bucket=client.bucket, Key=client._key(k), ChecksumMode="ENABLED")
              .get("ChecksumSHA256") for k in sealed}
    assert all(v and v.endswith("-1") for v in stored.values()), f"multipart composites expected: {stored}"
    before = _modified(s3_url)
    (archive / "OFFSITE.json").unlink()  # as after kill -9 before it recorded the uploads
    again = Uploader(Archive(archive), S3Storage(s3_url), 1.0).run_pass(force_open=True)
    assert again.uploaded == [] and again.bytes == 0, again.uploaded
    assert set(sealed) <= set(again.recorded)
    assert _modified(s3_url) == before, "an object was sent again"
    # The open segment's object, forgotten with the state, is still deleted once its sealed one is up.
    opened = [k for k in before if k.endswith(".tape.open")]
    assert len(opened) == 1
    _batch(dsn, archive, capture_cli, 1)  # seals it
    (archive / "OFFSITE.json").unlink()
    third = Uploader(Archive(archive), S3Storage(s3_url), 1.0).run_pass(force_open=True)
    assert opened[0] in third.deleted and opened[0] not in client.list_tree("")
    assert set(sealed) <= set(third.recorded)
