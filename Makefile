# make check: lint, format check, type check + the whole test suite (what CI runs); make demo: the main job.
.PHONY: check test lint types format demo fast bench bench-gpu

check:
	bash scripts/test.sh -q

test: check

fast:  ## unit tests only
	bash scripts/test.sh -q -m "not e2e"

lint:
	.venv/bin/ruff check src tests benchmarks examples
	.venv/bin/ruff format --check src tests benchmarks examples

types:
	.venv/bin/mypy src/tuneforge

format:
	.venv/bin/ruff format src tests benchmarks examples

demo:
	bash scripts/demo.sh

bench:  ## HF Trainer + PEFT baseline and tuneforge side by side (~25 min on 2 CPUs)
	bash -c 'source scripts/setup.sh && python benchmarks/train_throughput.py'

bench-gpu:  ## the same on a GPU machine, plus the CUDA-relevant tests
	bash benchmarks/gpu_check.sh
