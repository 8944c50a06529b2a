"""The run's `report.md`: settings, losses, why it stopped, and generations before and after training."""

from __future__ import annotations

from pathlib import Path


def write_report(run_dir: Path, config, result, data_summary: str,
                 samples_before: dict[str, str], samples_after: dict[str, str]) -> Path:
    lines = [f"# tuneforge run: {run_dir.name}", "",
             f"- model: `{config.model}`, method: `{config.method}`, data: `{config.data}`",
             f"- data: {data_summary}",
             f"- steps: {result.steps}/{result.total_steps} ({result.stopped_because})",
             f"- first loss: {result.losses[0]:.4f}, final loss: {result.final_loss:.4f}, "
             f"best loss: {min(result.losses):.4f}" if result.losses else "- no step ran",
             f"- {result.train_tokens:,} tokens in {result.seconds:.1f} s ({result.tokens_per_second:,.0f} tokens/s)"]
    if result.validation_losses:
        step, value = result.validation_losses[-1]
        lines.append(f"- validation loss at step {step}: {value:.4f}")
    if result.saved_to:
        lines.append(f"- saved to: `{result.saved_to}`")
    if samples_before:
        lines += ["", "## Generations before and after training", "", "| prompt | before | after |", "|---|---|---|"]
        for prompt, before in samples_before.items():
            cells = [prompt, before, samples_after.get(prompt, "")]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
