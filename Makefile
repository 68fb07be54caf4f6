# The two commands a new user needs: `make run` and `make test`. Both set everything up first.
.PHONY: run test setup setup-test bench

run: setup
	.venv/bin/monitor serve

test: setup-test
	.venv/bin/python -m pytest

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh --test

bench: setup
	.venv/bin/python benchmarks/pipeline_latency.py
