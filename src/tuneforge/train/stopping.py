"""When a run stops before its last step: stop_at_loss, early stopping, a signal, or the max_time budget, which
also plans how many steps fit in it.

    budget = TimeBudget(minutes=10)          # the clock starts now
    budget.last_step_that_fits(step=3)       # after step 3: e.g. 180 (measured 3.2 s a step), else None
    reason_to_stop(state, config, accelerator, stop, budget)   # e.g. "max_time of 10 minutes used up at step 181"

Every process gets the same answers, so all of them stop after the same step.
"""

from __future__ import annotations

import math
import time

from tuneforge.train.state import TrainState

clock = time.monotonic  # read through the module, so a test can replace it with a fake clock


class TimeBudget:
    """max_time in minutes (None: no budget), counted from when the run started (setup included)."""

    def __init__(self, minutes: float | None):
        self.minutes = minutes
        self.start = clock()
        self.step_ends: list[float] = []  # clock() after each step of this run

    def used_up(self) -> bool:
        return self.minutes is not None and clock() >= self.start + 60 * self.minutes

    def last_step_that_fits(self, step: int) -> int | None:
        """Call after each step: the last step that ends within the budget at the pace measured so far; given
        after 3 steps of this run and again after 6, 12, 24, ... (None in between, and with no budget)."""
        self.step_ends.append(clock())
        done = len(self.step_ends)
        if self.minutes is None or done < 3 or done % 3 or (done // 3) & (done // 3 - 1):
            return None
        # the first step of a run is slower (allocation, compiling, caches), so the pace starts after it
        pace = (self.step_ends[-1] - self.step_ends[0]) / (done - 1)
        left = self.start + 60 * self.minutes - self.step_ends[-1]
        return step + max(0, math.floor(left / max(pace, 1e-9)))

    def describe(self) -> str:
        return f"max_time of {self.minutes:g} minute{'s' if self.minutes != 1 else ''}"


def reason_to_stop(
    state: TrainState, config, accelerator, stop: dict, budget: TimeBudget | None = None
) -> str | None:
    """Why the run stops after this step, or None; every process gets the same answer."""
    loss = state.losses[-1]
    if config.stop_at_loss and loss <= config.stop_at_loss:
        return f"loss {loss:.4f} reached stop_at_loss {config.stop_at_loss}"
    patience = config.early_stopping_patience
    if patience and state.evaluations_without_improvement >= patience:
        return (
            f"early stopping: validation loss has not improved for {patience} evaluations "
            f"(best {state.best_validation:.4f})"
        )
    if any_process(accelerator, bool(stop.get("signal"))):
        stop.setdefault("signal", "a signal on another process")
        return f"interrupted by {stop['signal']}"
    if budget is not None and budget.minutes and any_process(accelerator, budget.used_up()):
        return f"{budget.describe()} used up at step {state.step}"
    return None


def any_process(accelerator, flag: bool) -> bool:
    """True when `flag` is set on any process, so every process stops after the same step."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    return bool(accelerator.reduce(torch.tensor(int(flag), device=accelerator.device), reduction="max"))


def least_over_processes(accelerator, value: int) -> int:
    """The smallest of every process's `value` (the same number everywhere)."""
    if accelerator.num_processes == 1:
        return value
    import torch

    negative = accelerator.reduce(torch.tensor(-value, device=accelerator.device), reduction="max")
    return -int(negative)
