# make check: lint + the whole test suite (what CI runs); make demo: the main job.
.PHONY: check test lint demo fast

check:
	bash scripts/test.sh -q

test: check

fast:  ## unit tests only
	bash scripts/test.sh -q -m "not e2e"

lint:
	.venv/bin/ruff check src tests benchmarks examples

demo:
	bash scripts/demo.sh
