# `make test` and `make demo` set up everything themselves (scripts/bootstrap.sh).
PY := .venv/bin/python

.PHONY: setup test test-fast demo bench clean

setup:
	@bash scripts/bootstrap.sh

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
	rm -rf .venv build *.egg-info .pytest_cache .demo bench/out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
