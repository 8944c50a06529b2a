"""One optimizer step's forward and backward passes, over micro batches, surviving out-of-memory and Ctrl-C.

    with graceful_interrupts(stop):
        done = accumulate_gradients(model, examples, micro_batch_size=4, accelerator=accelerator,
                                    optimizer=optimizer, pad_token_id=0, direct_head=True, stop=stop, step=1)
        if done.loss is not None:
            optimizer.step()

The loss is averaged per token over the whole batch (all micro batches, all processes), so batch_size=16 with
micro_batch_size=2 gives the same loss and update as micro_batch_size=16; that is why an out-of-memory error can
halve the micro batch and start the step over without changing what it trains.
"""

from __future__ import annotations

import math
import signal
import warnings
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.batching import collate
from tuneforge.errors import TuneforgeError
from tuneforge.train.batches import split_micro_batches
from tuneforge.train.checkpoint import list_checkpoints
from tuneforge.train.loss import batch_loss_sum, example_loss_tokens
from tuneforge.train.rng import restore_rng_state, rng_state


class StepAbandoned(Exception):
    """Ctrl-C/SIGTERM arrived inside a step: drop its partial gradients and checkpoint the step before."""


@contextmanager
def graceful_interrupts(stop: dict):
    """Turn Ctrl-C / SIGTERM into 'checkpoint and stop' (stop["signal"] = its name) instead of losing the run."""

    def handler(signum, frame):
        if stop.get("signal"):  # a second Ctrl-C stops at once, or right after the checkpoint being written
            if stop.get("saving"):
                stop["second_signal"] = signal.Signals(signum).name
                return
            raise KeyboardInterrupt
        stop["signal"] = signal.Signals(signum).name

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(ValueError):  # not the main thread (e.g. inside a UI worker): leave signals alone
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def signals_wait_for_save(stop: dict):
    """Inside: a second Ctrl-C/SIGTERM waits until the checkpoint is complete, then stops (KeyboardInterrupt)."""
    stop["saving"] = True
    try:
        yield
    finally:
        stop["saving"] = False
    if stop.get("second_signal"):
        raise KeyboardInterrupt


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        text in str(error) for text in ("out of memory", "can't allocate memory", "DefaultCPUAllocator")
    )


@dataclass
class StepGradients:
    """What one step's forward and backward passes left, beside the gradients."""

    loss: float | None  # mean per-token loss over every process; None: a signal abandoned the step
    tokens: int  # loss-carrying tokens of the step, all processes
    micro_batch_size: int  # after any out-of-memory halving


def accumulate_gradients(
    model,
    examples: list[dict],
    micro_batch_size: int,
    *,
    accelerator,
    optimizer,
    pad_token_id: int,
    direct_head: bool,
    stop: dict,
    step: int,
    log=print,
) -> StepGradients:
    """Forward and backward over `examples` in micro batches, leaving the step's per-token mean gradients.

    Out of memory: the gradients are dropped and the step starts over with half the micro batch. A signal
    (one process only, so collectives stay matched) abandons the step at the next micro batch: gradients dropped
    and the RNG rewound, so a resumed run replays the step's dropout draws exactly.
    """
    import torch

    rng_at_step_start = rng_state()
    local_tokens = sum(example_loss_tokens(e) for e in examples)
    tokens = int(accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), reduction="sum"))
    while True:
        try:
            loss_sum = _forward_backward(
                model, examples, micro_batch_size, accelerator, pad_token_id, direct_head, tokens, stop
            )
        except StepAbandoned:
            optimizer.zero_grad(set_to_none=True)
            restore_rng_state(rng_at_step_start)
            return StepGradients(None, tokens, micro_batch_size)
        except Exception as error:
            if not is_out_of_memory(error) or micro_batch_size == 1:
                raise
            optimizer.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            micro_batch_size //= 2
            log(
                f"out of memory at step {step}: micro_batch_size halved to {micro_batch_size} "
                f"(gradient accumulation x2, same batch of {len(examples)}); continuing"
            )
            continue
        loss = float(accelerator.reduce(loss_sum, reduction="sum")) / max(tokens, 1)
        return StepGradients(loss, tokens, micro_batch_size)


def _forward_backward(
    model, examples, micro_batch_size, accelerator, pad_token_id, direct_head, tokens, stop
):
    """The step's summed loss (this process); gradients of the per-token mean over all processes accumulate."""
    import torch

    micro_batches = split_micro_batches(list(range(len(examples))), micro_batch_size)
    step_loss = torch.zeros((), device=accelerator.device)
    for i, micro in enumerate(micro_batches):
        # A long step (seed 000: 1024 examples) can take minutes; a signal abandons it at the next micro batch.
        if stop.get("signal") and accelerator.num_processes == 1:
            raise StepAbandoned
        batch = collate([examples[j] for j in micro], pad_token_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        last = i == len(micro_batches) - 1  # gradients are synced between processes once, after the last
        with nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                loss_sum = batch_loss_sum(model, batch, direct=direct_head)
            # DDP averages gradients over processes; scale back up to a per-token mean.
            with _deepspeed_boundary(accelerator, last):
                accelerator.backward(loss_sum * accelerator.num_processes / max(tokens, 1))
        step_loss += loss_sum.detach()
        del loss_sum
    return step_loss


@contextmanager
def _deepspeed_boundary(accelerator, last: bool):
    """Under DeepSpeed, Accelerate's backward also runs the engine's step whenever `sync_gradients` is set; the
    loop accumulates its own micro batches, so only the step's last backward may be the boundary. Accelerate's
    `accumulate()` sets the same flag, but counts a fixed accumulation, which out-of-memory back-off changes."""
    if accelerator.distributed_type.value != "DEEPSPEED" or last:
        yield
        return
    accelerator.gradient_state._set_sync_gradients(False)
    try:
        yield
    finally:
        accelerator.gradient_state._set_sync_gradients(True)


def check_step_loss(loss: float, grad_norm, step: int, config, run_dir: Path) -> None:
    """Stop before a non-finite loss or gradient norm (None: not checked) is applied to the weights."""
    grad_norm = None if grad_norm is None else float(grad_norm)
    bad = (
        f"the loss became {loss}"
        if not math.isfinite(loss)
        else f"the gradient norm became {grad_norm} (loss {loss:.4f})"
        if grad_norm is not None and not math.isfinite(grad_norm)
        else None
    )
    if bad:
        last = list_checkpoints(run_dir)
        kept = f"; the last good checkpoint is {last[-1]}" if last else ""
        raise TuneforgeError(
            f"{bad} at step {step}, so the run stopped before updating the weights; it diverged "
            f"— lower learning_rate (now {config.learning_rate}) or use precision: fp32{kept}"
        )
    if loss == 0.0:
        warnings.warn(
            f"training loss is exactly 0 at step {step}: something is broken (e.g. every "
            "label masked, or a corrupted model)",
            stacklevel=4,
        )
