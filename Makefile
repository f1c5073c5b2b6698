# `make test` and `make demo` set up everything themselves (scripts/bootstrap.sh).
PY := .venv/bin/python

.PHONY: setup lint test demo bench clean

setup:
	@bash scripts/bootstrap.sh

# ruff and mypy read their settings from pyproject.toml; lint-imports checks the layer contract
# in [tool.importlinter] and is skipped while a checkout has none.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	@if grep -q '^\[tool\.importlinter\]' pyproject.toml; then .venv/bin/lint-imports; \
	else echo "lint: no [tool.importlinter] in pyproject.toml, lint-imports skipped"; fi

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) -m examples.demo

bench: setup
	$(PY) -m bench.run
	$(PY) -m bench.snapshot_bench
	$(PY) -m bench.replay_bench
	$(PY) -m bench.diff_bench

clean:
	rm -rf .venv build *.egg-info .pytest_cache .demo bench/out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
