"""Whether a run should torch.compile its blocks: pure decisions from the run's numbers.

    from tuneforge.train.levers import compile_kept, should_compile
    compile_now, why = should_compile(total_steps=2000, device="cuda", seconds_per_step=0.4)
    keep, why = compile_kept(eager_seconds=[4.8, 4.7], compiled_seconds=[4.4, 4.5, 4.4])

(Whether to pack short examples is a default chosen from the data: defaults.py.) torch.compile pays for itself
when the time it saves over the run beats its compile time. Measured on SmolLM2-135M, seq 256 x 4, 2 cores
(benchmarks/train_throughput.py, eager step / compiled step): in bf16 on a CPU with AMX 1.16x (1.93 -> 1.67 s,
~20 s to compile); in fp32 on an AMD EPYC with AVX2 only 1.07-1.09x for LoRA q,v, all-linear LoRA and a full
fine-tune (4.78 -> 4.43 s a LoRA q,v step), where a Xeon without AMX measured 1.00x and another run of the
full fine-tune 0.94x. So a CPU compiles only for a long run, and the loop keeps a compile only when the run's
own compiled steps are measured faster than its eager ones (`compile_kept`). With recipe auto the loop decides
after timing its first steps (`compile_kind` names the row of COMPILE_SPEEDUP).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

# eager step time / compiled step time, and seconds to compile the blocks once, by device (measured/typical)
COMPILE_SPEEDUP = {"cuda": 1.25, "cpu": 1.07, "cpu-amx": 1.15}
COMPILE_SECONDS = {"cuda": 60.0, "cpu": 60.0, "cpu-amx": 60.0}
AUTO_COMPILE_AFTER = 3  # steps timed before the loop decides (the first one includes one-time work)
COMPILE_MARGIN = 2.0  # the saving must be this many times the compile time: estimates are rough
COMPILE_TRIAL_STEPS = 3  # compiled steps timed (after the one that compiles) before the compile is judged
KEEP_COMPILE_BELOW = 0.98  # kept when its median step takes less than this share of the eager median


def compile_kind(device: str, precision: str) -> str:
    """The COMPILE_SPEEDUP row for a run on `device` in `precision`: cpu-amx is bf16 on a CPU with AMX."""
    from tuneforge.hardware import cpu_has_amx

    if device == "cpu" and precision == "bf16" and cpu_has_amx():
        return "cpu-amx"
    return device


def should_compile(
    total_steps: int,
    device: str,
    seconds_per_step: float | None = None,
    speedup: float | None = None,
    compile_seconds: float | None = None,
) -> tuple[bool, str]:
    """Whether torch.compile of the transformer blocks repays its compile time over `total_steps`, and why.

    `seconds_per_step` is the eager step time when known (e.g. measured over the first steps); `speedup` and
    `compile_seconds` default to COMPILE_SPEEDUP / COMPILE_SECONDS for the device.
    """
    if device not in COMPILE_SPEEDUP:
        return False, f"not compiled: torch.compile is not used on {device}"
    if device.startswith("cpu") and not (
        shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    ):
        return False, "not compiled: torch.compile on a CPU needs a C++ compiler (none found)"
    speedup = COMPILE_SPEEDUP[device] if speedup is None else speedup
    compile_seconds = COMPILE_SECONDS[device] if compile_seconds is None else compile_seconds
    if speedup <= 1.0:
        return False, f"not compiled: on {device} compiled steps are measured no faster than eager ones"
    if seconds_per_step is None:
        # unknown step time: assume a 0.5 s step, the order of a small model's step on a GPU
        seconds_per_step = 0.5
    saved = total_steps * seconds_per_step * (1 - 1 / speedup)
    if saved < COMPILE_MARGIN * compile_seconds:
        return False, (
            f"not compiled: {total_steps} steps would save ~{saved:.0f} s, less than "
            f"{COMPILE_MARGIN:.0f}x the ~{compile_seconds:.0f} s compile"
        )
    return True, (
        f"compiled: {total_steps} steps of ~{seconds_per_step:.2f} s save ~{saved:.0f} s against a "
        f"~{compile_seconds:.0f} s compile (set compile: false to skip)"
    )


def compile_kept(eager_seconds: Sequence[float], compiled_seconds: Sequence[float]) -> tuple[bool, str]:
    """Whether a run's compiled steps are faster enough than its eager ones to keep the compile, and why
    (medians, so one slow spell of a shared machine does not decide)."""
    eager, compiled = _median(eager_seconds), _median(compiled_seconds)
    if compiled < KEEP_COMPILE_BELOW * eager:
        return True, f"compile kept: compiled steps take {compiled:.2f} s against {eager:.2f} s eager"
    return False, (
        f"compile undone: compiled steps take {compiled:.2f} s against {eager:.2f} s eager, no faster on "
        f"this machine"
    )


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
