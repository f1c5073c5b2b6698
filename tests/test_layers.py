"""The layers hold (docs/ARCHITECTURE.md, "Layers"): every module imports first without a hidden
cycle, the import-linter contracts are kept, and the archive's one lock refuses a second holder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pgtape.errors import PgtapeError
from pgtape.lock import Lock

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# Each module imported first in a clean interpreter state: a cycle between two modules breaks only
# when one particular module of them is the first one imported.
EACH_FIRST = """
import importlib, pkgutil, sys
import pgtape
names = sorted(m.name for m in pkgutil.walk_packages(pgtape.__path__, "pgtape.") if m.name != "pgtape.__main__")
for name in names:
    for loaded in [m for m in sys.modules if m == "pgtape" or m.startswith("pgtape.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
print(len(names))
"""


def test_every_module_imports_first() -> None:
    r = subprocess.run([sys.executable, "-c", EACH_FIRST], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 60  # the linked capture/, snapshots/ and replay/ were walked too


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed: pip install -e '.[lint]'")
def test_the_import_contracts_are_kept() -> None:
    r = subprocess.run([str(LINT_IMPORTS), "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    first = Lock(tmp_path / "x.lock", "busy: stop it first")
    with pytest.raises(PgtapeError, match="^busy: stop it first$"):
        Lock(tmp_path / "x.lock", "busy: stop it first")
    first.release()
    Lock(tmp_path / "x.lock", "busy: stop it first").release()
