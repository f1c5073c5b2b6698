# `make test` and `make demo` set up everything themselves (scripts/bootstrap.sh).
PY := .venv/bin/python

.PHONY: setup lint lint-imports test test-fast demo bench clean

setup:
	@bash scripts/bootstrap.sh

# ruff and mypy read their settings from pyproject.toml; lint-imports checks the layer contract
# ([tool.importlinter]; docs/ARCHITECTURE.md, "Layers").
lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/lint-imports

lint-imports: setup
	.venv/bin/lint-imports
# Unit tests: pure logic, no PostgreSQL, a few seconds.
test-fast: setup
	$(PY) -m pytest -q tests/unit

test: setup
	$(PY) -m pytest -q tests/unit
	$(PY) -m pytest -q tests --ignore=tests/unit

demo: setup
	$(PY) -m examples.demo

bench: setup
	$(PY) -m bench.run
	$(PY) -m bench.snapshot_bench
	$(PY) -m bench.replay_bench
	$(PY) -m bench.diff_bench

clean:
	rm -rf .venv build *.egg-info .pytest_cache .demo bench/out .import_linter_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
