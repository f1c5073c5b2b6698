"""Encryption at rest against a real PostgreSQL (issue 14; docs/FORMAT.md, "Encryption").

1. With a keyring configured, capture + snapshot + replay give the live state; verify, verify --live,
   log and diff read the archive; no distinctive row value (nor an added column's default) is in any
   byte of any archive file; GENERATION.json says the generation is encrypted.
2. Without the key, or with a keyring that lacks it: one line naming the key id (and the keyring) for
   replay, verify, log, diff and status. A keyring readable by others is refused.
3. A flipped byte inside an encrypted frame whose CRC is recomputed (only authentication can catch it):
   verify names the file and offset, replay refuses.
4. Rotation: files written after `pgtape key rotate` use the new key, replay reads across both; with
   the old key removed the error names it; prune reports a key no file uses.
5. An unencrypted archive is as before (format 3 headers, no encrypted frame, readable without a key);
   switching either way takes `pgtape init --restart`, refused otherwise with one line.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
from datetime import timezone
import shutil
import struct
import zlib
from pathlib import Path

import psycopg
import pytest
import zstandard

import test_serve
from conftest import current_lsn, one_line_error, run_pgtape, run_sql, wait_until
from pgtape.keys import key_id, load
from pgtape.tape import FORMAT_VERSION
from pgtape.tape.archive import Archive
from pgtape.tape.frames import FLAG_ENCRYPTED, FLAG_ZSTD, HEADER, HEADER_SIZE, KIND_DATA, KIND_HEADER, read_frame

TABLE = "public.payments"


def _keyring(path: Path) -> Path:
    run_pgtape("key", "generate", str(path), check=True)
    return path


def _env(keyring: Path | None) -> dict[str, str]:
    return {"PGTAPE_KEY_FILE": str(keyring)} if keyring else {}


def _pgtape(keyring: Path | None, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
    return run_pgtape(*args, env=_env(keyring), check=check)


def _capture(dsn: str, archive: Path, keyring: Path | None) -> str:
    """Capture up to now; returns that LSN."""
    lsn = current_lsn(dsn)
    _pgtape(keyring, "capture", "--dsn", dsn, "--archive", str(archive), "--tables", TABLE, "--until-lsn", lsn)
    return lsn


def _cli(dsn: str, archive: Path) -> list[str]:
    return ["--dsn", dsn, "--archive", str(archive), "--tables", TABLE]


def _same_as_live(dsn: str, archive: Path, keyring: Path | None, schema: str) -> None:
    cli = _cli(dsn, archive)
    _pgtape(keyring, "replay", *cli, "--latest", "--schema", schema)
    r = _pgtape(keyring, "diff", *cli, "--schema", schema, "--json", check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout + r.stderr


def _segments(archive: Path) -> list[Path]:
    return sorted(archive.rglob("*.tape")) + sorted(archive.rglob("*.tape.open"))


def _frame_flags(path: Path) -> list[tuple[int, int, int]]:
    """(offset, kind, flags) of every frame, from headers only."""
    out, data, offset = [], path.read_bytes(), 0
    while offset + HEADER_SIZE <= len(data):
        _, kind, flags, _, length, _, _ = HEADER.unpack_from(data, offset)
        out.append((offset, kind, flags))
        offset += HEADER_SIZE + length
    return out


def _readable(path: Path) -> bytes:
    """What anyone can read from a file without a key: its bytes, and of a framed file (compressed with
    Huffman-coded literals, so a row value need not show in its bytes) every frame not encrypted, decoded."""
    data = path.read_bytes()
    if not path.name.endswith((".tape", ".tape.open", ".snap")):
        return data
    dec, plain = zstandard.ZstdDecompressor(), [data]
    for offset, _, flags in _frame_flags(path):
        if not flags & FLAG_ENCRYPTED:
            length, raw = HEADER.unpack_from(data, offset)[4:6]
            body = data[offset + HEADER_SIZE:offset + HEADER_SIZE + length]
            plain.append(dec.decompress(body, max_output_size=raw) if flags & FLAG_ZSTD else body)
    return b"".join(plain)


def _secret_rows(dsn: str, marker: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table payments (id int primary key, note text, amount numeric(12,2))")
        c.execute("insert into payments select g, %s || '-row-' || g, g * 1.25 from generate_series(1, 200) g",
                  (marker,))
        # rows that exist before a column is added read its default: attmissingval, in TABLES.json's view
        c.execute(f"alter table payments add column tag text default '{marker}-missing'")


def test_encrypted_round_trip_leaks_nothing_and_needs_its_key(dsn: str, tmp_path: Path) -> None:
    marker = f"Zq{secrets.token_hex(6)}"
    archive, keyring = tmp_path / "archive", _keyring(tmp_path / "keyring")
    kid = load(keyring).active_id
    _secret_rows(dsn, marker)
    cli = _cli(dsn, archive)
    _capture(dsn, archive, keyring)  # init: the initial base, the slot
    run_sql(dsn, f"update payments set note = '{marker}-updated' where id <= 50",
            "delete from payments where id > 190",
            f"insert into payments (id, note, amount, tag) values (1000, '{marker}-new', 9.99, '{marker}-tag')")
    _capture(dsn, archive, keyring)
    _pgtape(keyring, "snapshot", *cli)
    run_sql(dsn, f"update payments set amount = amount + 1, note = '{marker}-late' where id % 7 = 0")
    end = _capture(dsn, archive, keyring)
    _same_as_live(dsn, archive, keyring, "rec")

    r = _pgtape(keyring, "verify", *cli)
    assert r.stdout.startswith("ok: "), r.stdout
    log = _pgtape(keyring, "log", *cli, "--json").stdout
    assert f"{marker}-late" in log  # the tape decrypts
    assert f"{marker}-new" in _pgtape(keyring, "log", *cli, "--key", f"note={marker}-new").stdout  # (audited, masked)
    r = _pgtape(keyring, "diff", *cli, "--target-lsn", end, "--json", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    _pgtape(keyring, "status", *cli)

    # Nothing of the rows in any byte of any file; every frame after a header encrypted.
    files = [p for p in archive.rglob("*") if p.is_file()]
    assert any(p.name == "TABLES.json" for p in files) and any(p.suffix == ".snap" for p in files)
    leaks = [str(p) for p in files if marker.encode() in _readable(p)]
    assert not leaks, leaks
    for path in [*_segments(archive), *archive.rglob("*.snap")]:
        frames = _frame_flags(path)
        assert frames[0][1] == KIND_HEADER and not frames[0][2] & FLAG_ENCRYPTED
        assert len(frames) > 1 and all(flags & FLAG_ENCRYPTED for _, _, flags in frames[1:]), (path, frames)
    assert Archive(archive).generation(1).encrypted

    # No key: one line naming the key id and how to configure it, for every reader.
    for args in (["replay", *cli, "--latest", "--schema", "rec2"], ["verify", *cli], ["log", *cli],
                 ["diff", *cli, "--target-lsn", end], ["status", *cli]):
        r = _pgtape(None, *args, check=False)
        one_line_error(r, r.returncode or 99, kid, "no key is configured", "PGTAPE_KEY_FILE", after_logs=True)
        assert r.returncode != 0
    # Another keyring (a wrong key): names the key id and that keyring.
    other = _keyring(tmp_path / "other")
    for args in (["replay", *cli, "--latest", "--schema", "rec2"], ["verify", *cli], ["log", *cli],
                 ["diff", *cli, "--target-lsn", end]):
        r = _pgtape(other, *args, check=False)
        one_line_error(r, r.returncode or 99, kid, "not in the keyring", str(other), after_logs=True)
        assert r.returncode != 0
    # A keyring others may read is refused, whatever the command.
    keyring.chmod(0o644)
    r = _pgtape(keyring, "log", *cli, check=False)
    one_line_error(r, 2, str(keyring), "accessible by group or others", "chmod 600")
    keyring.chmod(0o600)
    assert keyring.read_text().split()[-1] not in (r.stdout + r.stderr + log)  # (the key itself never shows)

    # Capture with the key removed, or snapshot: refused, saying how to switch.
    r = _pgtape(None, "snapshot", *cli, check=False)
    one_line_error(r, 3, "is encrypted, but no key is configured", "init --restart")

    # A flipped byte inside an encrypted frame, CRC recomputed: only authentication catches it.
    copy = tmp_path / "tampered"
    shutil.copytree(archive, copy)
    victim = _segments(copy)[0]
    offset = _tamper(victim)
    r = _pgtape(keyring, "verify", *_cli(dsn, copy), check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"problem: {victim} at offset {offset}: authentication failed (wrong key or tampered data)" in r.stdout, \
        r.stdout
    r = _pgtape(keyring, "replay", *_cli(dsn, copy), "--latest", "--schema", "rec3", check=False)
    one_line_error(r, 3, str(victim), f"offset {offset}", "authentication failed", after_logs=True)


def _tamper(path: Path) -> int:
    """Flip one byte inside the ciphertext of the first data frame and fix its CRC; returns its offset."""
    data = bytearray(path.read_bytes())
    offset = next(o for o, kind, _ in _frame_flags(path) if kind == KIND_DATA)
    length = HEADER.unpack_from(data, offset)[4]
    data[offset + HEADER_SIZE + length // 2] ^= 0x01
    body = bytes(data[offset + HEADER_SIZE:offset + HEADER_SIZE + length])
    crc = zlib.crc32(body, zlib.crc32(data[offset:offset + 16]))
    struct.pack_into(">I", data, offset + 16, crc)
    path.write_bytes(bytes(data))
    with open(path, "rb") as f:  # the checksum holds: no torn write, no flipped bit to see without the key
        f.seek(offset)
        try:
            read_frame(f, offset, zstandard.ZstdDecompressor())
        except Exception as e:
            assert "encrypted frame" in str(e), e
    return offset


def test_rotation_replays_across_keys_and_prune_names_unused_keys(dsn: str, tmp_path: Path) -> None:
    marker = f"Zq{secrets.token_hex(6)}"
    archive, keyring = tmp_path / "archive", _keyring(tmp_path / "keyring")
    first = load(keyring).active_id
    _secret_rows(dsn, marker)
    cli = _cli(dsn, archive)
    _capture(dsn, archive, keyring)
    run_sql(dsn, "update payments set amount = amount * 2 where id < 20")
    _capture(dsn, archive, keyring)
    _pgtape(keyring, "key", "rotate", str(keyring))
    unused = load(keyring).active_id  # rotated away from before anything used it
    _pgtape(keyring, "key", "rotate", str(keyring))
    last = load(keyring).active_id
    assert _pgtape(keyring, "key", "list", str(keyring)).stdout.split() == [first, unused, last, "(active)"]
    run_sql(dsn, "insert into payments (id, note, amount) values (5000, 'after rotation', 1)")
    _pgtape(keyring, "snapshot", *cli)  # written with the new key
    run_sql(dsn, "delete from payments where id between 100 and 120")
    _capture(dsn, archive, keyring)
    snap = max(archive.rglob("*.snap"), key=lambda p: p.stat().st_mtime)
    assert last.encode() in snap.read_bytes()[:400]  # its header names the new key
    _same_as_live(dsn, archive, keyring, "rec")

    r = _pgtape(keyring, "prune", *cli, "--dry-run", "--json")
    assert json.loads(r.stdout)["unused_keys"] == [unused], r.stdout
    r = _pgtape(keyring, "prune", *cli, "--dry-run")
    assert f"key {unused} of {keyring} is used by no archive file" in r.stdout, r.stdout

    # The first key removed from the keyring: what needs it says which key is missing, and where.
    lines = keyring.read_text().splitlines()
    keyring.write_text("\n".join(line for line in lines if not line.startswith(first)) + "\n")
    r = _pgtape(keyring, "replay", *cli, "--latest", "--schema", "rec2", check=False)
    one_line_error(r, r.returncode or 99, first, "not in the keyring", str(keyring), after_logs=True)


def test_unencrypted_archive_unchanged_and_switching_takes_init_restart(dsn: str, tmp_path: Path) -> None:
    marker = f"Zq{secrets.token_hex(6)}"
    archive, keyring = tmp_path / "archive", _keyring(tmp_path / "keyring")
    _secret_rows(dsn, marker)
    cli = _cli(dsn, archive)
    _capture(dsn, archive, None)
    run_sql(dsn, "update payments set amount = 1 where id = 1")
    _capture(dsn, archive, None)
    for path in [*_segments(archive), *archive.rglob("*.snap")]:
        with open(path, "rb") as f:
            header = read_frame(f, 0, zstandard.ZstdDecompressor())
        assert header is not None and b"encryption" not in header.payload
        assert all(not flags & FLAG_ENCRYPTED for _, _, flags in _frame_flags(path))
    assert b'"encrypted"' not in (archive / "generations/0001/GENERATION.json").read_bytes()
    assert Archive(archive).identity().format_version == FORMAT_VERSION
    # (the search for row values above can fail: here it finds them, in the tape, the base and TABLES.json)
    plain = {p.name for p in archive.rglob("*") if p.is_file() and marker.encode() in _readable(p)}
    assert "TABLES.json" in plain and any(n.endswith(".snap") for n in plain) \
        and any(n.endswith((".tape", ".tape.open")) for n in plain), plain

    # A key configured for an unencrypted generation: capture and snapshot refuse, saying how to switch.
    for args in (["capture", *cli, "--until-lsn", current_lsn(dsn)], ["snapshot", *cli], ["init", *cli]):
        r = _pgtape(keyring, *args, check=False)
        one_line_error(r, 3, "generation 1", "is not encrypted, but a key is configured", "pgtape init --restart",
                       after_logs=True)
    _same_as_live(dsn, archive, keyring, "rec0")  # readers do not mind a key they do not need

    _pgtape(keyring, "init", *cli, "--restart")
    assert Archive(archive).generation(2).encrypted
    run_sql(dsn, f"update payments set note = '{marker}-gen2' where id = 2")
    _capture(dsn, archive, keyring)
    _same_as_live(dsn, archive, keyring, "rec1")
    gen2 = archive / "generations/0002"
    assert not [p for p in gen2.rglob("*") if p.is_file() and marker.encode() in _readable(p)]
    # A plaintext file put in place of an encrypted one (nothing to authenticate it) is named by verify.
    copy = tmp_path / "replaced"
    shutil.copytree(archive, copy)
    [plain_base] = (copy / "generations/0001").rglob("*.snap")
    [victim] = (copy / "generations/0002").rglob("*.snap")
    shutil.copyfile(plain_base, victim)
    r = _pgtape(keyring, "verify", *_cli(dsn, copy), check=False)
    assert r.returncode == 1 and f"problem: {victim}: not encrypted, but generation 2 is" in r.stdout, r.stdout

    # And back: without the key the encrypted generation refuses capture; init --restart starts a plain one.
    r = _pgtape(None, "capture", *cli, "--until-lsn", current_lsn(dsn), check=False)
    one_line_error(r, 3, "generation 2", "is encrypted, but no key is configured", "init --restart", after_logs=True)
    _pgtape(None, "init", *cli, "--restart")
    assert not Archive(archive).generation(3).encrypted
    run_sql(dsn, "update payments set note = 'plain again' where id = 3")
    _capture(dsn, archive, None)
    _same_as_live(dsn, archive, None, "rec2")
    r = _pgtape(None, "verify", *cli, check=False)
    one_line_error(r, r.returncode or 99, "no key is configured")  # generation 2 still needs its key
    assert _pgtape(keyring, "verify", *cli).stdout.startswith("ok: ")


def test_key_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    keyring = _keyring(tmp_path / "k")
    assert keyring.stat().st_mode & 0o777 == 0o600
    before = keyring.read_bytes()
    r = run_pgtape("key", "generate", str(keyring))
    one_line_error(r, 3, "exists already", "pgtape key rotate")
    assert keyring.read_bytes() == before
    [line] = [ln for ln in before.decode().splitlines() if not ln.startswith("#")]
    kid, material = line.split()
    listed = run_pgtape("key", "list", str(keyring), check=True).stdout
    assert kid in listed and material not in listed and kid == key_id(load(keyring).active_key())


def test_service_jobs_and_capture_on_an_encrypted_archive(dsn: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """pgtape serve with PGTAPE_KEY_FILE: its capture, a backup job, a recovery job and a verification
    job all work on the encrypted archive (its children get the keyring's path, never a key)."""
    marker = f"Zq{secrets.token_hex(6)}"
    keyring = _keyring(tmp_path / "keyring")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table payments (id int primary key, amount numeric(12,2) not null, note text)")
        c.execute("create table orders (id int primary key, item text)")
        c.execute("insert into payments select g, g * 1.5, %s || g from generate_series(1, 100) g", (marker,))
        c.execute("insert into orders select g, 'item ' || g from generate_series(1, 20) g")
    archive = tmp_path / "archive"
    _pgtape(keyring, "capture", "--dsn", dsn, "--archive", str(archive), "--tables", "public.payments,public.orders",
            "--until-lsn", current_lsn(dsn))
    with_key = test_serve.clean_env
    monkeypatch.setattr(test_serve, "clean_env", lambda: {**with_key(), "PGTAPE_KEY_FILE": str(keyring)})
    serve = test_serve.Serve(tmp_path, dsn)
    try:
        status, doc = serve.call("POST", "/v1/backups", {"backup_type": "full"})
        assert status == 202, doc
        job = serve.job(doc["job_id"])
        assert job["status"] == "completed" and job["result"]["rows"] == {"public.payments": 100, "public.orders": 20}
        run_sql(dsn, f"update payments set note = '{marker}-served' where id <= 10")
        with psycopg.connect(dsn, autocommit=True) as c:
            expected = sorted(c.execute("select id, amount::text, note from payments").fetchall())
            when = c.execute("select now()").fetchone()[0]  # type: ignore[index]
            c.execute(f"update payments set note = '{marker}-after' where id = 11")  # the tape must pass `when`
        wait_until("the service's capture to put the update on the tape",
                   lambda: f"{marker}-after" in _pgtape(keyring, "log", "--archive", str(archive), "--json",
                                                        check=False).stdout, 60, 0.3)
        status, doc = serve.call("POST", "/v1/recoveries", {"recovery_type": "point_in_time",
                                                             "target_time": when.astimezone(timezone.utc).isoformat(),
                                                             "tables": ["payments"], "dry_run": False,
                                                             "into": {"schema": "restored"}})
        assert status == 202, doc
        job = serve.job(doc["id"])
        assert job["status"] == "completed", job
        with psycopg.connect(dsn) as c:
            assert sorted(c.execute("select id, amount::text, note from restored.payments").fetchall()) == expected
        status, doc = serve.call("POST", "/v1/recoveries", {"recovery_type": "data_verification",
                                                             "tables": ["payments"]})
        job = serve.job(doc["id"])
        assert job["status"] == "completed" and job["result"]["ok"] is True, job
        assert serve.call("GET", "/v1/status")[0] == 200
    finally:
        serve.stop()
    files = [p for p in archive.rglob("*") if p.is_file()]
    assert not [str(p) for p in files if marker.encode() in _readable(p)]
    key = keyring.read_text().split()[-1]
    assert not [str(p) for p in [*files, serve.log] if key.encode() in p.read_bytes()]


def test_encrypted_tape_survives_torn_tails_and_kill_9(dsn: str, tmp_path: Path) -> None:
    """Torn-tail repair and resuming the open segment, encrypted: a torn or garbage tail is cut (without
    authentication getting in the way), capture goes on in the same segment with its key, and a capture
    killed with SIGKILL mid-traffic loses nothing; replay equals the live table, verify passes."""
    seed = int(os.environ.get("PGTAPE_TEST_SEED") or secrets.randbelow(1 << 30))
    print(f"PGTAPE_TEST_SEED={seed}")
    rng = random.Random(seed)
    archive, keyring = tmp_path / "archive", _keyring(tmp_path / "keyring")
    _secret_rows(dsn, "k")
    cli = _cli(dsn, archive)
    _capture(dsn, archive, keyring)
    run_sql(dsn, *[f"insert into payments (id, note, amount) values ({i}, 'n{i}', {i})" for i in range(300, 320)])
    _capture(dsn, archive, keyring)
    for variant in ("garbage", "partial_copy"):
        [seg] = archive.rglob("*.tape.open")
        data = seg.read_bytes()
        off = [o for o, _, _ in _frame_flags(seg)][-1]
        torn = data[off:rng.randint(off + 1, len(data) - 1)]  # a torn write of the last frame: a prefix of it
        tail = rng.randbytes(rng.randint(1, 3000)) if variant == "garbage" else torn
        seg.write_bytes(data + tail)
        run_sql(dsn, f"update payments set amount = amount + 1 where id % {rng.randint(2, 9)} = 0")
        lsn = current_lsn(dsn)
        r = _pgtape(keyring, "capture", *cli, "--until-lsn", lsn)
        assert f"cut {len(tail)} bytes" in r.stderr, f"seed {seed} {variant}: {r.stderr}"
    _same_as_live(dsn, archive, keyring, "rec_torn")

    env = {k: v for k, v in os.environ.items() if not k.startswith("PGTAPE_")} | {"PGTAPE_KEY_FILE": str(keyring)}
    proc = subprocess.Popen([sys.executable, "-m", "pgtape", "capture", *cli], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            for i in range(400):
                c.execute("insert into payments (id, note, amount) values (%s, %s, %s)", (1000 + i, f"kill-{i}", i))
                if i == 100:  # capture is streaming (its start-up is behind it) before it is killed
                    wait_until("capture to put kill-99 on the tape", lambda: '"kill-99"' in _pgtape(
                        keyring, "log", *cli, "--json", check=False).stdout, 60, 0.2)
                if i == 250:
                    proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    _capture(dsn, archive, keyring)
    _same_as_live(dsn, archive, keyring, "rec_killed")
    assert _pgtape(keyring, "verify", *cli).stdout.startswith("ok: ")
