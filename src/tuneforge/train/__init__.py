"""Training: the one loop (loop.py), optimizers and schedulers, progress, the run orchestration (run.py)."""
