"""Learning curves: the loss plot of a run and seed 002's under/over/well-fit diagnosis.

label, reason = diagnose_fit(train_losses, [(step, validation_loss), ...])
plot_loss_curve(train_losses, [(step, validation_loss), ...], Path("runs/x/loss_curve.png"), title=label)
"""

from __future__ import annotations

from pathlib import Path


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def diagnose_fit(train_losses: list[float], validation_losses: list[tuple[int, float]]) -> tuple[str, str]:
    """('underfit' | 'overfit' | 'well-fit' | 'undetermined', one-sentence reason and advice), as seed 002 defines.

    - underfit: training loss flat, or still falling at the end (the model has not finished learning);
    - overfit: training loss falls while validation loss reached a minimum and rose again;
    - well-fit: both fell to stability with a small gap between them.
    """
    n = len(train_losses)
    if n < 4:
        return "undetermined", f"only {n} step{'' if n == 1 else 's'}: too few to read a learning curve"
    smooth = _smooth(train_losses, max(1, n // 10))
    first, last = smooth[0], smooth[-1]
    if len(validation_losses) >= 3:
        values = [v for _, v in validation_losses]
        best_index = min(range(len(values)), key=values.__getitem__)
        best_step, best = validation_losses[best_index]
        if best_index < len(values) - 1 and values[-1] > best * 1.02 and last < first:
            return "overfit", (
                f"validation loss bottomed at {best:.3f} (step {best_step}) and rose to "
                f"{values[-1]:.3f} while training loss kept falling: stop near step {best_step}, "
                "or use fewer epochs, a lower learning rate or more data"
            )
    if first - last < 0.05 * abs(first):
        return "underfit", (
            f"training loss stayed flat ({first:.3f} -> {last:.3f}): the model is not learning; "
            "raise learning_rate, rank or epochs, or check the data"
        )
    tail = max(2, n // 5)
    earlier, recent = sum(smooth[-2 * tail : -tail]) / tail, sum(smooth[-tail:]) / tail
    if earlier - recent > 0.05 * abs(earlier):
        unseen = (
            ""
            if len(validation_losses) >= 3
            else "; with too few validation losses to compare, this cannot be told from memorising the "
            "training text (give validation data, validation_split or validation_data, to see)"
        )
        return "underfit", (
            f"training loss was still falling at the end ({earlier:.3f} -> {recent:.3f} over the "
            f"last steps): train longer (more epochs or steps){unseen}"
        )
    if validation_losses:
        gap = validation_losses[-1][1] - last
        return "well-fit", (
            f"training loss fell from {first:.3f} to a stable {last:.3f}; validation loss "
            f"{validation_losses[-1][1]:.3f} (gap {gap:+.3f})"
        )
    return "well-fit", (
        f"training loss fell from {first:.3f} to a stable {last:.3f} (no validation data, so "
        "overfitting cannot be seen: set validation_split)"
    )


def plot_loss_curve(
    train_losses: list[float], validation_losses: list[tuple[int, float]], path: Path, title: str = ""
) -> Path | None:
    """Train (raw and smoothed) and validation loss against step, as a PNG. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    steps = list(range(1, len(train_losses) + 1))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, train_losses, color="tab:blue", alpha=0.3, linewidth=1)
    ax.plot(
        steps, _smooth(train_losses, max(1, len(train_losses) // 10)), color="tab:blue", label="train loss"
    )
    if validation_losses:
        ax.plot(*zip(*validation_losses, strict=True), "o-", color="tab:orange", label="validation loss")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a short run's ticks are whole steps
    ax.set_ylabel("loss (per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
