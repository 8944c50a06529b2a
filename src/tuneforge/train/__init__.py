"""Training: the one loop (loop.py) and what it is made of — one optimizer step over micro batches (step.py),
the state a checkpoint saves (state.py, checkpoint.py), the loss (loss.py), optimizers and schedulers
(optim.py), memory (memory.py), speed levers (fused.py) and progress (progress.py). A whole run from a config
is tuneforge.recipe.run_training."""
