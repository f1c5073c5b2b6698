# `make test` and `make demo` set up everything themselves (scripts/bootstrap.sh).
PY := .venv/bin/python

.PHONY: setup test demo bench clean lint-imports

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest -q tests

# The layering contract in pyproject.toml ([tool.importlinter]; docs/ARCHITECTURE.md, "Layers").
lint-imports: setup
	@test -x .venv/bin/lint-imports || $(PY) -m pip install --quiet --disable-pip-version-check -e '.[lint]'
	.venv/bin/lint-imports

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
