"""Console progress for training: step/total, loss, learning rate, tokens/s and ETA.

On a terminal a live bar redraws in place; elsewhere (CI, log files) one plain line is printed per log step.
"""

from __future__ import annotations

import sys
import time


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
        self.enabled = enabled
        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.start = time.perf_counter()
        self._bar = None
        if enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=self.console)
            self._task = self._bar.add_task("train", total=total_steps, status="")
            self._bar.start()

    def update(self, step: int, loss: float, learning_rate: float, tokens_per_second: float,
               validation_loss: float | None = None) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(step, 1) * (self.total_steps - step)
        status = f"loss {loss:.4f}  lr {learning_rate:.2e}  {tokens_per_second:,.0f} tok/s"
        if validation_loss is not None:
            status += f"  val {validation_loss:.4f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, status=status)
        else:
            self.console.print(f"step {step}/{self.total_steps}  {status}  elapsed {format_duration(elapsed)}  "
                               f"eta {format_duration(eta)}", soft_wrap=True)

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, soft_wrap=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
