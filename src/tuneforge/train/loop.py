"""The one training loop: every method (LoRA, QLoRA, full, scratch) runs through `train`.

    from tuneforge.train.loop import train
    model, result = train(model, tokenizer, prepared, config, run_dir=Path("runs/demo"))

Built on Accelerate so the same loop runs on one CPU or under `accelerate launch`/torchrun (DDP, FSDP,
DeepSpeed). We write the loop instead of using `transformers.Trainer` because the Trainer costs ~27% in bf16
on CPU here, and per-token loss across micro batches, exact resume and OOM back-off need control of the loop.
"""

from __future__ import annotations

import math
import warnings
from contextlib import closing, nullcontext
from functools import partial
from pathlib import Path

from tuneforge.data.examples import PreparedData
from tuneforge.errors import TuneforgeError
from tuneforge.models.kind import is_peft
from tuneforge.train.batches import StepOrder
from tuneforge.train.checkpoint import (
    apply_checkpoint,
    check_identity,
    check_resume_config,
    list_checkpoints,
    open_resume_checkpoint,
    run_identity,
    save_checkpoint,
)
from tuneforge.train.fused import compile_decoder_layers, lean_forwards
from tuneforge.train.loss import evaluate_loss
from tuneforge.train.memory import (
    auto_micro_batch_size,
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
)
from tuneforge.train.optim import build_optimizer, build_scheduler
from tuneforge.train.progress import MetricsLog, TrainingProgress
from tuneforge.train.state import TrainResult, TrainState
from tuneforge.train.step import accumulate_gradients, graceful_interrupts, signals_wait_for_save


def train(
    model,
    tokenizer,
    data: PreparedData,
    config,
    run_dir: Path,
    precision: str = "fp32",
    device: str = "cpu",
    show_progress: bool = True,
    on_checkpoint=None,
):
    """Train `model` (already prepared for its method) on `data.train`; returns (model, TrainResult).

    `on_checkpoint(model, step)` runs after each checkpoint is written (e.g. the before/after gallery); it may
    sample freely, the RNG is restored afterwards.
    """
    import torch

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = _accelerator(precision, device, config, run_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data_seed = config.data_seed if config.data_seed is not None else config.seed
    order = StepOrder(
        len(data.train),
        config.examples_per_step,
        data_seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    steps_per_epoch = order.steps_per_epoch()
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))

    # The model: prepared by Accelerate (DDP/FSDP/DeepSpeed wrapper); `bare_model` is the model underneath.
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    bare_model = accelerator.unwrap_model(model)
    if config.compile:
        compile_decoder_layers(bare_model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Calling the decoder and head directly skips the wrapper's forward, which DDP/FSDP need for gradient sync.
    direct_head = accelerator.num_processes == 1
    # Lean LoRA reads lora_A's weight without calling lora_A; DeepSpeed ZeRO-3 and FSDP gather sharded weights in
    # module hooks, so there PEFT's own forward runs (DDP and one process keep the whole weights).
    lean_lora_layers = accelerator.distributed_type.value not in ("DEEPSPEED", "FSDP", "MEGATRON_LM")
    lean = lean_forwards(bare_model, lora=lean_lora_layers) if config.lean_layers else nullcontext()

    # The state: fresh, or the checkpoint's (which keeps its micro batch size, auto or not).
    progress = TrainingProgress(total_steps, enabled=show_progress and accelerator.is_main_process)
    state = TrainState(micro_batch_size=config.micro_batch_size, identity=run_identity(config, data))
    result = TrainResult(run_dir=run_dir, total_steps=total_steps, state=state)
    if config.resume_from:
        say = partial(_say, progress)
        result.resumed_from, files = open_resume_checkpoint(run_dir, config.resume_from, say)
        check_identity(result.resumed_from, state.identity)
        check_resume_config(result.resumed_from, files, config, state.identity, say)
        result.state = state = apply_checkpoint(result.resumed_from, files, bare_model, optimizer, scheduler)
        progress.message(f"resumed from {result.resumed_from} at step {state.step}/{total_steps}")
    elif config.auto_micro_batch:
        longest = max(len(e["input_ids"]) for e in data.train)
        per_process = min(config.examples_per_step, -(-len(data.train) // accelerator.num_processes))
        state.micro_batch_size, why = auto_micro_batch_size(
            bare_model, per_process, longest, precision, accelerator.device
        )
        progress.message(why)

    stop: dict = {}  # graceful_interrupts puts the signal's name here
    checkpoint = partial(
        save_run_checkpoint,
        run_dir,
        accelerator,
        model,
        optimizer,
        scheduler,
        config.save_total_limit,
        on_checkpoint,
        config=config,
        stop=stop,
    )
    metrics = MetricsLog(
        run_dir / "metrics.jsonl",
        accelerator,
        progress,
        config,
        steps_per_epoch,
        total_steps,
        fresh=not config.resume_from,
        resumed_at=state.step,
    )
    with graceful_interrupts(stop), lean, closing(metrics):
        for step in range(state.step + 1, total_steps + 1):
            examples = [data.train[i] for i in order.step(step)]
            done = accumulate_gradients(
                model,
                examples,
                state.micro_batch_size,
                accelerator=accelerator,
                optimizer=optimizer,
                pad_token_id=pad_id,
                direct_head=direct_head,
                stop=stop,
                step=step,
                log=progress.message,
            )
            state.micro_batch_size = done.micro_batch_size
            if (
                done.loss is None
            ):  # abandoned: the checkpoint is of the step before, which a resume replays from
                result.stopped_because = f"interrupted by {stop['signal']} during step {step}"
                checkpoint(state)
                break
            grad_norm = accelerator.clip_grad_norm_(trainable, config.max_grad_norm or float("inf"))
            # before the update, so a NaN never reaches the weights (fp16's scaler skips inf steps itself)
            _check_loss(done.loss, None if accelerator.scaler else grad_norm, step, config, run_dir)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.record_step(done.loss, done.tokens)

            validation_loss = None
            if data.validation and (
                (config.eval_steps and step % config.eval_steps == 0) or step == total_steps
            ):
                validation_loss = evaluate_loss(
                    model,
                    data.validation,
                    state.micro_batch_size,
                    pad_id,
                    accelerator.device,
                    accelerator.autocast,
                    direct=direct_head,
                )
                state.record_validation(validation_loss)
            metrics.record(
                step, done.loss, done.tokens, scheduler.get_last_lr()[0], grad_norm, validation_loss
            )
            if config.save_steps and (step % config.save_steps == 0 or step == total_steps):
                checkpoint(state)
            reason = _reason_to_stop(state, config, accelerator, stop)
            if reason:
                result.stopped_because = reason
                if reason.startswith("interrupted"):
                    checkpoint(state)
                break

    result.seconds = metrics.elapsed()
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if config.gradient_checkpointing:
        disable_gradient_checkpointing(model)
    model.eval()
    if result.stopped_because != "finished":
        progress.message(f"stopped: {result.stopped_because} (step {result.steps}/{total_steps})")
    return model, result


def save_run_checkpoint(
    run_dir: Path,
    accelerator,
    model,
    optimizer,
    scheduler,
    keep: int | None,
    on_checkpoint,
    state: TrainState,
    config=None,
    stop: dict | None = None,
) -> Path | None:
    """Checkpoint `state` once per step, on the main process; then `on_checkpoint`, leaving the RNG untouched.

    A second Ctrl-C/SIGTERM during the save waits for it to complete (then stops), so the checkpoint of the last
    finished step is always whole.
    """
    import torch

    if not accelerator.is_main_process or any(
        p.name == f"step-{state.step}" for p in list_checkpoints(run_dir)
    ):
        return None
    bare_model = accelerator.unwrap_model(model)
    with signals_wait_for_save(stop if stop is not None else {}):
        path = save_checkpoint(run_dir, bare_model, optimizer, scheduler, state, keep=keep, config=config)
    if on_checkpoint is not None:
        with torch.random.fork_rng(devices=[]):
            on_checkpoint(bare_model, state.step)
        model.train()
    return path


def _check_loss(loss: float, grad_norm, step: int, config, run_dir: Path) -> None:
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
            stacklevel=3,
        )


def _reason_to_stop(state: TrainState, config, accelerator, stop: dict) -> str | None:
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
    if _any_process(accelerator, bool(stop.get("signal"))):
        stop.setdefault("signal", "a signal on another process")
        return f"interrupted by {stop['signal']}"
    return None


def _accelerator(precision: str, device: str, config, run_dir: Path):
    import importlib.util

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # One process may train several times with different precisions (tests, notebooks); Accelerate keeps a
    # global state that refuses a new mixed_precision, so reset it (the process group itself is kept).
    AcceleratorState._reset_state()
    for tracker in config.report_to:
        if importlib.util.find_spec(tracker) is None:
            raise TuneforgeError(f"report_to {tracker} needs the {tracker} package: pip install {tracker}")
    mixed = {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")
    accelerator = Accelerator(
        mixed_precision=mixed,
        cpu=device == "cpu",
        log_with=config.report_to or None,
        project_dir=str(run_dir / "trackers"),
    )
    if config.report_to:
        hyperparameters = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.to_dict().items()
        }
        accelerator.init_trackers(run_dir.name, config=hyperparameters)
    return accelerator


def _say(progress: TrainingProgress, text: str) -> None:
    """A message about the resume that must be seen even with the progress display off."""
    if progress.enabled:
        progress.message(text)
    else:
        warnings.warn(text, stacklevel=3)


def _any_process(accelerator, flag: bool) -> bool:
    """True when `flag` is set on any process, so every process stops after the same step."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    return bool(accelerator.reduce(torch.tensor(int(flag), device=accelerator.device), reduction="max"))


def save_trained(model, tokenizer, run_dir: Path) -> Path:
    """Save a LoRA run's adapter to <run>/adapter (PEFT format) or a full run's model to <run>/model."""
    target = run_dir / ("adapter" if is_peft(model) else "model")
    model.save_pretrained(target)
    if target.name == "model":
        tokenizer.save_pretrained(target)
    return target
