"""Benchmarks: `make bench` runs bench.run (capture vs pg_recvlogical); see BENCHMARKS.md."""
