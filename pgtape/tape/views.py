"""Saved views of the captured tables: generations/NNNN/TABLES.json.

Capture saves each new view of its tables (pgtape/shapes.py) with the tape position it describes,
before that position can be durable, so a restarted capture resumes with the view of the tape's end;
snapshots read the newest one for the tables' objects, verify checks the file reads.
"""

from __future__ import annotations

import msgspec

from pgtape import metadata
from pgtape.errors import PgtapeError
from pgtape.shapes import View
from pgtape.tape.archive import Archive
from pgtape.tape.crypto import SealedDoc, open_doc, seal_doc

TABLES_FILE = "TABLES.json"
KEEP_VIEWS = 50  # views kept in TABLES.json beyond the newest one at or before the tape's end


class _SavedView(msgspec.Struct):
    as_of_lsn: int
    tables: View


class _TablesFile(msgspec.Struct, omit_defaults=True):
    """The views, or in an encrypted generation the views sealed (they hold column values: `missing`)."""

    views: list[_SavedView] = []
    sealed: SealedDoc | None = None


def _read(archive: Archive, key: str) -> list[_SavedView]:
    saved = metadata.read(archive.storage, key, _TablesFile)
    if saved.sealed is None:
        return saved.views
    return open_doc(archive.keyring, saved.sealed, key, archive.storage.where(key), list[_SavedView])


def _write(archive: Archive, gen: int, key: str, views: list[_SavedView]) -> None:
    generation = archive.generation(gen)
    if generation.encrypted:
        archive.check_encryption(generation)  # (refuses to go on without the key: never plaintext here)
        assert archive.keyring is not None
        metadata.write(archive.storage, key, _TablesFile(sealed=seal_doc(archive.keyring, key, views)))
    else:
        metadata.write(archive.storage, key, _TablesFile(views))


def _key(archive: Archive, gen: int) -> str:
    return f"{archive.generation_key(gen)}/{TABLES_FILE}"


def load_view(archive: Archive, gen: int, at_lsn: int) -> View:
    """The view of the tape at `at_lsn` (its end): the newest one saved at or before it."""
    path = archive.storage.where(_key(archive, gen))
    try:
        saved = _read(archive, _key(archive, gen))
    except FileNotFoundError:
        raise PgtapeError(f"{path} is missing: the archive is incomplete") from None
    usable = [v for v in saved if v.as_of_lsn <= at_lsn]
    if not usable:
        raise PgtapeError(f"{path} holds no view of the tables at {at_lsn:X}: the archive is inconsistent")
    return dict(max(usable, key=lambda v: v.as_of_lsn).tables)


def save_view(archive: Archive, gen: int, as_of_lsn: int, view: View, keep_from: int | None = None) -> None:
    """Add the view of the tape at `as_of_lsn`; views no restart can need (all but the newest at or
    before `keep_from`, the durable end of the tape) are dropped."""
    key = _key(archive, gen)
    views: list[_SavedView] = []
    if archive.storage.exists(key):
        views = _read(archive, key)
    views = [v for v in views if v.as_of_lsn < as_of_lsn] + [_SavedView(as_of_lsn, dict(view))]
    if keep_from is not None:
        older = [v for v in views if v.as_of_lsn <= keep_from]
        if older:
            views = [max(older, key=lambda v: v.as_of_lsn)] + [v for v in views if v.as_of_lsn > keep_from]
    _write(archive, gen, key, views[-KEEP_VIEWS:])
