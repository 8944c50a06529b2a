"""Re-planning the rest of a learning rate schedule when a run's length changes: a resume with more (or fewer)
steps than the checkpoint was planned for, or a max_time budget measured after the first steps.

    scheduler = build_scheduler(optimizer, config, total_steps=4)   # ... 4 steps trained, then resumed:
    replan_schedule(scheduler, config, step=4, total_steps=8)
    # -> "the learning rate decays from 2.50e-03 at step 5 to 0.00e+00 after step 8"

The rule: still inside the warm-up, the warm-up is kept and the decay then ends at the new end; after it, the
decay continues from the learning rate the next step would have had (the last step's, when the old schedule
had already ended at 0) to the schedule's end at the new last step: the rest of the old curve, stretched or
squeezed. No step ever trains at learning rate 0 because the run got longer.

A scheduler's `schedule_plan` (set by build_scheduler) says how its curve was made: the first entry is its
warm-up and length, each later one stretches the curve before it from a step on. It is plain numbers, saved in
the checkpoint's scheduler.pt, so a run resumed from a re-planned checkpoint follows the same curve exactly.
"""

from __future__ import annotations

import math

from tuneforge.train.optim import schedule_curve, warmup_steps

FIXED_LENGTH = ("constant", "constant_with_warmup", "inverse_sqrt")  # curves that ignore the total steps


def follow_plan(scheduler, config, plan: list[dict]) -> None:
    """Make `scheduler` follow `plan` from its current step on (also the learning rate of the next step)."""
    curve = schedule_curve(config, plan[0]["warmup_steps"], plan[0]["total_steps"])
    total = plan[0]["total_steps"]
    for entry in plan[1:]:
        curve = _stretched(curve, entry["from_step"], entry["anchor"], total, entry["total_steps"])
        total = entry["total_steps"]
    scheduler.schedule_plan = plan
    scheduler.lr_lambdas = [curve] * len(scheduler.lr_lambdas)
    rates = [base * curve(scheduler.last_epoch) for base in scheduler.base_lrs]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates


def _stretched(curve, start: int, anchor: int, old_total: int, new_total: int):
    """`curve` until `start`; then its values from `anchor` to `old_total`, spread over `start`..`new_total`."""
    scale = (old_total - anchor) / max(1, new_total - start)

    def stretched(step):  # a plain function: LambdaLR saves none of its state (the plan holds it)
        return curve(step) if step < start else curve(anchor + (step - start) * scale)

    return stretched


def replan_schedule(scheduler, config, step: int, total_steps: int) -> str | None:
    """Re-plan the schedule after `step` optimizer steps to end at `total_steps`; what changed, or None."""
    plan = scheduler.schedule_plan
    old_total, warmup = plan[-1]["total_steps"], plan[0]["warmup_steps"]
    if total_steps == old_total or step >= total_steps or config.lr_scheduler in FIXED_LENGTH:
        return None
    anchor = max(warmup, min(step, old_total - 1))
    if total_steps < old_total and not config.warmup_steps and step < warmup:
        # a warm-up that is a ratio of the run shrinks with it (max_time: 20 warm-up steps planned for 400 steps
        # in a run that fits 25 would leave 5 steps to decay); it ends now at the earliest, the decay then
        # continuing from the peak (`anchor`)
        warmup = max(step, min(warmup, warmup_steps(config, total_steps)))
    if step < warmup or anchor >= old_total:  # keep the warm-up (scaled down if the run no longer holds it)
        if warmup >= total_steps:
            warmup = min(total_steps - 1, max(step, math.ceil(warmup * total_steps / old_total)))
        follow_plan(scheduler, config, [{"warmup_steps": warmup, "total_steps": total_steps}])
        start = f"keeps its warm-up to step {warmup}, then decays"
    else:
        follow_plan(
            scheduler, config, [*plan, {"from_step": step, "anchor": anchor, "total_steps": total_steps}]
        )
        start = f"decays from {scheduler.get_last_lr()[0]:.2e} at step {step + 1}"
    end = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](total_steps)
    return f"the learning rate {start} to {end:.2e} after step {total_steps}"
