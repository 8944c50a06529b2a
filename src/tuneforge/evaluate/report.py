"""The run's `report.md`: settings, losses, fit diagnosis, why it stopped, generations before and after.

    from tuneforge.evaluate.report import write_report
    write_report(run_dir, config, result, prepared.describe(), samples_before, samples_after, "bf16", "cpu")

A run (tuneforge.recipe.run_training) writes it at the end, beside loss_curve.png.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.evaluate.curves import diagnose_fit, plot_loss_curve


def training_variants(config) -> list[str]:
    """What the run trains beyond plain LoRA: 'DoRA', 'rsLoRA', 'LoRA+ x16', 'NEFTune alpha 5'."""
    parts = [
        name for key, name in (("use_dora", "DoRA"), ("use_rslora", "rsLoRA")) if getattr(config, key, False)
    ]
    if getattr(config, "loraplus_lr_ratio", None):
        parts.append(f"LoRA+ x{config.loraplus_lr_ratio:g}")
    if getattr(config, "neftune_noise_alpha", None):
        parts.append(f"NEFTune alpha {config.neftune_noise_alpha:g}")
    return parts


def write_report(
    run_dir: Path,
    config,
    result,
    data_summary: str,
    samples_before: dict[str, str],
    samples_after: dict[str, str],
    precision: str = "",
    device: str = "",
    launch=None,
) -> Path:
    """`launch` (tuneforge.train.launch.Launch): the processes the run got, and how many were asked for."""
    batch = (
        launch.describe_batch(config.examples_per_step, result.micro_batch_size)
        if launch is not None
        else f"batch_size {config.examples_per_step} (micro batch {result.micro_batch_size})"
    )
    compile_state = (
        "on"
        if config.compile
        else f"off: tried after step {result.compiled_after}, undone after step "
        f"{result.compile_undone_after} (its steps were no faster here)"
        if result.compiled_after and result.compile_undone_after
        else f"on after step {result.compiled_after} (recipe auto: the run repays it)"
        if result.compiled_after
        else "off"
    )
    label, reason = diagnose_fit(result.losses, result.validation_losses)
    plot = plot_loss_curve(
        result.losses, result.validation_losses, run_dir / "loss_curve.png", title=f"{run_dir.name}: {label}"
    )
    adapter = (  # a full fine-tune or a new model has no rank: its config.yaml keeps the unused default
        f"rank {config.rank}, alpha {config.alpha}, target_modules {','.join(config.target_modules)}, "
        + (f"trained further from `{config.from_adapter}`, " if config.from_adapter else "")
        if config.method in ("lora", "qlora")
        else ""
    )
    lines = [
        f"# tuneforge run: {run_dir.name}",
        "",
        f"- model: `{config.model}`, method: `{config.method}`, precision: `{precision}`, device: `{device}`",
        f"- data: `{config.data}` — {data_summary}",
        f"- settings: {adapter}{''.join(f'{part}, ' for part in training_variants(config))}"
        f"learning_rate {config.learning_rate} ({config.lr_scheduler}), "
        f"{batch}, "
        f"cutoff_len {config.cutoff_len}, packing {'on' if config.packing else 'off'}, compile "
        f"{compile_state}; full list in config.yaml",
        f"- steps: {result.steps}/{result.total_steps} ({result.stopped_because})",
    ]
    if launch is not None:
        lines.append(
            f"- {launch.describe()}" + (f" — **{launch.shortfall()}**" if launch.shortfall() else "")
        )
    if result.resumed_from:
        lines.append(f"- resumed from `{result.resumed_from}`")
    if result.losses:
        lines.append(
            f"- training loss: first {result.losses[0]:.4f}, final {result.final_loss:.4f}, "
            f"best {min(result.losses):.4f}"
        )
    if result.validation_losses:
        best_step, best = min(result.validation_losses, key=lambda p: p[1])
        lines.append(
            f"- validation loss: final {result.validation_losses[-1][1]:.4f}, best {best:.4f} "
            f"(step {best_step})"
        )
    lines += [
        f"- fit: **{label}** — {reason}",
        f"- speed: {result.train_tokens:,} loss-carrying tokens in {result.seconds:.1f} s "
        f"({result.tokens_per_second:,.0f} tokens/s)",
    ]
    if result.saved_to:
        lines.append(f"- saved to: `{result.saved_to}`")
    chosen = getattr(config, "chosen", [])
    if chosen:  # recipe auto: what was chosen for the user, and why (every key they gave was kept)
        lines += ["", f"## Chosen for you (recipe {config.recipe})", ""]
        lines += [f"- `{key}` {rest}" for key, _, rest in (line.partition(" ") for line in chosen)]
    if plot:
        lines += ["", "![loss curve](loss_curve.png)"]
    if samples_before:
        lines += [
            "",
            "## Generations before and after training",
            "",
            "| prompt | before | after |",
            "|---|---|---|",
        ]
        for prompt, before in samples_before.items():
            cells = [prompt, before, samples_after.get(prompt, "")]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
