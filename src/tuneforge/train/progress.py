"""Where a run's numbers go: the console (step/total, loss, learning rate, tokens/s, ETA), metrics.jsonl and
the trackers of report_to.

    progress = TrainingProgress(total_steps=100)
    metrics = MetricsLog(Path("runs/demo/metrics.jsonl"), accelerator, progress, config, steps_per_epoch=25)
    metrics.record(step=1, loss=2.31, tokens=812, learning_rate=2e-4, grad_norm=0.9)

On a terminal a live bar redraws in place; elsewhere (CI, log files) one plain line is printed per log step.
A step much slower than the usual (another process on the same cores) is pointed out (`StepTimes`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from statistics import median


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TrainingProgress:
    """Shows training progress; `update` is called once per logged optimizer step."""

    def __init__(self, total_steps: int, enabled: bool = True, stream=None):
        from rich.console import Console

        self.total_steps = total_steps
        self.resumed_at = 0  # a resumed run's ETA counts the speed of its own steps only
        self.seconds_before = 0.0  # ... and its elapsed time goes on from its checkpoint's
        self.enabled = enabled
        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.start = time.perf_counter()
        self._bar = None
        if enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task("train", total=total_steps, status="")
            self._bar.start()

    def update(
        self,
        step: int,
        loss: float,
        learning_rate: float,
        tokens_per_second: float,
        validation_loss: float | None = None,
    ) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(step - self.resumed_at, 1) * (self.total_steps - step)
        elapsed += self.seconds_before
        status = f"loss {loss:.4f}  lr {learning_rate:.2e}  {tokens_per_second:,.0f} tok/s"
        if validation_loss is not None:
            status += f"  val {validation_loss:.4f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, status=status)
        else:
            self.console.print(
                f"step {step}/{self.total_steps}  {status}  elapsed {format_duration(elapsed)}  "
                f"eta {format_duration(eta)}",
                soft_wrap=True,
            )

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, soft_wrap=True)

    def resume_at(self, step: int, seconds_before: float = 0.0) -> None:
        """A resumed run: the bar starts at `step`, speed and ETA count from now, elapsed from `seconds_before`."""
        self.resumed_at, self.start = step, time.perf_counter()
        self.seconds_before = seconds_before
        if self._bar is not None:
            self._bar.reset(self._task, total=self.total_steps, completed=step)

    def set_total_steps(self, total_steps: int) -> None:
        """A re-planned run (max_time): the bar and the ETA count to the new last step."""
        self.total_steps = total_steps
        if self._bar is not None:
            self._bar.update(self._task, total=total_steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def slow_step_warning(
    step: int, seconds: list[float], warned_at: int | None, warm_up: int = 3, window: int = 20
) -> str | None:
    """The warning for step `step` when it took (seconds[-1]) over 2.5x the median of the `window` steps before
    it, not counting this run's first `warm_up` steps (allocation, compiling); at most one per 50 steps."""
    usual_steps = seconds[warm_up:-1][-window:]
    if len(usual_steps) < 3 or (warned_at is not None and step - warned_at < 50):
        return None
    usual, took = median(usual_steps), seconds[-1]
    if took <= 2.5 * usual:
        return None
    return (
        f"step {step} took {took:.2f} s, {took / usual:.1f}x the usual {usual:.2f} s: is another process "
        "using the CPU?"
    )


class StepTimes:
    """This run's step times (forward, backward and update; not evaluation or saving), for slow_step_warning."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.warned_at: int | None = None
        self.started = time.perf_counter()

    def start(self) -> None:
        self.started = time.perf_counter()

    def stop(self, step: int) -> str | None:
        self.seconds.append(time.perf_counter() - self.started)
        warning = slow_step_warning(step, self.seconds, self.warned_at)
        if warning:
            self.warned_at = step
        return warning


def keep_records_until(path: Path, step: int) -> None:
    """Drop the records after `step` (and a line cut short): a run killed after logging a step but before its
    checkpoint replays that step on resume, which must not log it twice."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


class MetricsLog:
    """Every logging_steps steps (and at each evaluation and the last step): one metrics.jsonl record (main
    process), the same numbers to the report_to trackers, and the progress line."""

    def __init__(
        self,
        path: Path,
        accelerator,
        progress: TrainingProgress,
        config,
        steps_per_epoch: int,
        total_steps: int,
        fresh: bool = True,
        resumed_at: int = 0,
        seconds_before: float = 0.0,
    ):
        self.accelerator, self.progress, self.config = accelerator, progress, config
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.file = None
        if accelerator.is_main_process:
            if fresh and path.exists():
                path.unlink()  # a fresh run in a reused folder starts a fresh log
            elif path.exists():
                keep_records_until(path, resumed_at)
            self.file = path.open("a")
        if resumed_at:
            progress.resume_at(resumed_at, seconds_before)
        self.seconds_before = seconds_before  # a resumed run's elapsed_s goes on from its checkpoint's
        self.start = self.window_start = time.perf_counter()
        self.window_tokens = 0  # tokens trained since the last record, for its tokens/s

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.progress.set_total_steps(total_steps)

    def record(
        self,
        step: int,
        loss: float,
        tokens: int,
        learning_rate: float,
        grad_norm,
        validation_loss: float | None = None,
    ) -> None:
        self.window_tokens += tokens
        if step % self.config.logging_steps and step != self.total_steps and validation_loss is None:
            return
        now = time.perf_counter()
        tokens_per_second = self.window_tokens / max(now - self.window_start, 1e-9)
        record = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "loss": round(loss, 6),
            "learning_rate": learning_rate,
            "grad_norm": round(float(grad_norm), 6),
            "tokens": self.window_tokens,
            "tokens_per_second": round(tokens_per_second, 1),
            "elapsed_s": round(self.seconds_before + now - self.start, 2),
        }
        self.window_tokens, self.window_start = 0, now
        if validation_loss is not None:
            record["validation_loss"] = round(validation_loss, 6)
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.config.report_to:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        self.progress.update(step, loss, learning_rate, tokens_per_second, validation_loss)

    def elapsed(self) -> float:
        """Seconds of training so far, the sessions before a resume included."""
        return self.seconds_before + time.perf_counter() - self.start

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.progress.close()
        if self.config.report_to:
            self.accelerator.end_training()
