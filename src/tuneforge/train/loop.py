"""The one training loop: every method (LoRA, QLoRA, full, scratch) runs through `train`.

    from tuneforge.train.loop import train
    model, result = train(model, tokenizer, prepared, config, run_dir=Path("runs/demo"))

Built on Accelerate so the same loop runs on one CPU or under `accelerate launch`/torchrun (DDP, FSDP,
DeepSpeed). We write the loop instead of using `transformers.Trainer` because the Trainer costs ~27% in bf16
on CPU here, and per-token loss across micro batches, exact resume and OOM back-off need control of the loop.

The pieces, in the order a run meets them: train/setup.py (everything before step 1, the resume included),
train/step.py (one optimizer step), train/validation.py (evaluation and checkpoints/best), train/stopping.py
(when to stop, the max_time plan) and train/schedule.py (re-planning the learning rate for a new length).
"""

from __future__ import annotations

import warnings
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path

from tuneforge.data.examples import PreparedData
from tuneforge.models.kind import is_peft
from tuneforge.models.saving import save_active_adapter, save_pretrained
from tuneforge.train.checkpoint import list_checkpoints, save_checkpoint
from tuneforge.train.fused import compile_decoder_layers, uncompile_decoder_layers
from tuneforge.train.host_memory import allocator_note
from tuneforge.train.levers import (
    AUTO_COMPILE_AFTER,
    COMPILE_SPEEDUP,
    COMPILE_TRIAL_STEPS,
    compile_kept,
    should_compile,
)
from tuneforge.train.memory import disable_gradient_checkpointing
from tuneforge.train.progress import MetricsLog, StepTimes, TrainingProgress
from tuneforge.train.schedule import replan_schedule
from tuneforge.train.setup import (
    TrainingSetup,
    set_up_training,
    starting_result,
    unwrap_model,
)
from tuneforge.train.sharded import save_sharded_checkpoint
from tuneforge.train.state import TrainResult, TrainState
from tuneforge.train.step import (
    StepGradients,
    accumulate_gradients,
    check_step_loss,
    graceful_interrupts,
    signals_wait_for_save,
)
from tuneforge.train.stopping import TimeBudget, least_over_processes, reason_to_stop
from tuneforge.train.validation import BestCheckpoint, overfitting_note, validation_loss

SHARDED_ENGINES = ("FSDP", "DEEPSPEED")  # Accelerate's DistributedType values whose ranks hold weight shards

__all__ = ["TrainResult", "save_run_checkpoint", "save_trained", "train"]


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
    budget = TimeBudget(config.max_time)  # max_time counts from here: the setup is part of the run
    run = set_up_training(model, tokenizer, data, config, run_dir, precision, device)
    progress = TrainingProgress(run.total_steps, enabled=show_progress and run.accelerator.is_main_process)
    _note(progress, run.threads_note)
    if run.accelerator.device.type == "cpu" and run.accelerator.is_main_process:
        _note(progress, allocator_note())
    result = starting_result(run, data, config, run_dir, progress, precision)
    state = result.state
    stop: dict = {}  # graceful_interrupts puts the signal's name here
    checkpoint = partial(
        save_run_checkpoint,
        run_dir,
        run.accelerator,
        run.model,
        run.optimizer,
        run.scheduler,
        config.save_total_limit,
        on_checkpoint,
        config=config,
        stop=stop,
    )
    sharded = run.accelerator.distributed_type.value in SHARDED_ENGINES  # checkpoints/best is one process's
    keeps_best = bool(data.validation) and (config.keep_best or config.load_best_at_end) and not sharded
    if sharded and (config.keep_best or config.load_best_at_end) and run.accelerator.is_main_process:
        warnings.warn(
            f"keep_best/load_best_at_end are off under {run.accelerator.distributed_type.value}: checkpoints/best "
            "is one process's checkpoint; the save_steps checkpoints are written and resumable",
            stacklevel=2,
        )
    best = BestCheckpoint(run_dir, run, config, stop, enabled=keeps_best)
    metrics = MetricsLog(
        run_dir / "metrics.jsonl",
        run.accelerator,
        progress,
        config,
        run.order.steps_per_epoch(),
        run.total_steps,
        fresh=not config.resume_from,
        resumed_at=state.step,
        seconds_before=state.train_seconds,
    )
    step_times = StepTimes()
    with graceful_interrupts(stop), run.lean, noisy_embeddings(run, config), closing(metrics):
        while state.step < result.total_steps:  # max_time may re-plan the total after the first steps
            step = state.step + 1
            step_times.start()
            # the rate this step applies (the scheduler moves on during it)
            learning_rate = run.scheduler.get_last_lr()[0]
            done, grad_norm = _optimizer_step(run, data, config, state, step, stop, progress.message)
            if (
                done.loss is None
            ):  # abandoned: the checkpoint is of the step before, which a resume replays from
                result.stopped_because = f"interrupted by {stop['signal']} during step {step}"
                checkpoint(state)
                break
            slow = step_times.stop(step)
            _note(progress, slow)
            _note(progress, run.threads.after_step(slow=slow is not None))
            if _compile_if_it_repays(run, step, result.total_steps, step_times.seconds, progress):
                result.compiled_after = step
            elif result.compiled_after and _undo_compile_if_no_faster(
                run, step, step_times.seconds, progress
            ):
                result.compile_undone_after = step  # its steps were no faster: eager again
            _plan_for_time(run, config, budget, step, result, metrics)
            validation = validation_loss(run, data, config, state, step, result.total_steps)
            metrics.record(step, done.loss, done.tokens, learning_rate, grad_norm, validation)
            state.train_seconds = round(metrics.elapsed(), 3)
            if validation is not None:
                best.keep(run.bare_model, state)
                _note(progress, overfitting_note(state.validation_losses))
            if config.save_steps and (step % config.save_steps == 0 or step == result.total_steps):
                checkpoint(state)
            # after the last step the run is done: a Ctrl-C during its validation or save need not stop it
            reason = (
                reason_to_stop(state, config, run.accelerator, stop, budget)
                if step < result.total_steps
                else None
            )
            if reason:
                result.stopped_because = reason
                if reason.startswith("interrupted"):
                    checkpoint(state)
                break

    result.seconds = metrics.elapsed()
    if result.stopped_because == "finished" and result.total_steps < run.total_steps:
        result.stopped_because = f"{budget.describe()}: {result.total_steps} of {run.total_steps} steps fit"
    result.best_checkpoint = best.path if best.step(state) is not None else None
    if config.load_best_at_end:
        result.loaded_best = _load_best(best, run, state, progress)
    if sharded:  # every rank takes part in gathering the shards
        result.gathered_state = run.accelerator.get_state_dict(run.model)
    model = unwrap_model(run.accelerator, run.model, keep_fp32_wrapper=False)
    if config.gradient_checkpointing:
        disable_gradient_checkpointing(model)
    model.eval()
    if result.stopped_because != "finished":
        progress.message(f"stopped: {result.stopped_because} (step {result.steps}/{result.total_steps})")
    return model, result


@contextmanager
def noisy_embeddings(run: TrainingSetup, config):
    """NEFTune within the block: uniform noise of alpha / sqrt(tokens x hidden size) on the input embeddings, in
    training mode only, as transformers' neftune_post_forward_hook adds it (not imported: transformers.integrations
    probes DeepSpeed's accelerator on import and logs a line in every run). Drawn from torch's RNG, which
    checkpoints keep, so a resumed run draws the same noise."""
    alpha = config.neftune_noise_alpha
    if not alpha:
        yield
        return
    import torch

    def add_noise(module, inputs, output):
        if not module.training:
            return output
        bound = alpha / (output.size(1) * output.size(2)) ** 0.5
        return output + torch.zeros_like(output).uniform_(-bound, bound)

    embeddings = unwrap_model(run.accelerator, run.model).get_input_embeddings()
    handle = embeddings.register_forward_hook(add_noise)
    try:
        yield
    finally:
        handle.remove()


def _optimizer_step(
    run: TrainingSetup, data, config, state: TrainState, step: int, stop: dict, log
) -> tuple[StepGradients, object]:
    """Step `step`: gradients over its examples in micro batches (halved on out of memory), the divergence
    check, the update. Returns what the passes left and the gradient norm; loss None: a signal abandoned it."""
    examples = [data.train[i] for i in run.order.step(step)]
    done = accumulate_gradients(
        run.model,
        examples,
        state.micro_batch_size,
        accelerator=run.accelerator,
        optimizer=run.optimizer,
        pad_token_id=run.pad_token_id,
        direct_head=run.direct_head,
        stop=stop,
        step=step,
        log=log,
    )
    state.micro_batch_size = done.micro_batch_size
    if done.loss is None:
        return done, None
    grad_norm = run.accelerator.clip_grad_norm_(run.trainable, config.max_grad_norm or float("inf"))
    # before the update, so a NaN never reaches the weights (fp16's scaler skips inf steps itself)
    grad_norm_to_check = None if run.accelerator.scaler else grad_norm
    check_step_loss(done.loss, grad_norm_to_check, step, config, run.run_dir)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.record_step(done.loss, done.tokens)
    return done, grad_norm


def _compile_if_it_repays(run: TrainingSetup, step: int, total_steps: int, seconds: list, progress) -> bool:
    """recipe auto: once AUTO_COMPILE_AFTER steps are timed, torch.compile the blocks if the steps left save
    more than the compile costs on this machine (train/levers.py); said either way where compiling can win.
    Whether it compiled."""
    if run.compile_kind is None or len(seconds) != AUTO_COMPILE_AFTER:
        return False
    timed = sorted(seconds[1:])  # the first step also pays one-time work (optimizer state, kernel choice)
    compile_now, why = should_compile(
        total_steps - step, run.compile_kind, seconds_per_step=timed[len(timed) // 2]
    )
    if compile_now:
        compile_decoder_layers(run.bare_model)
    if compile_now or COMPILE_SPEEDUP.get(run.compile_kind, 1.0) > 1.0:
        progress.message(f"after step {step}: {why}")
    return compile_now


def _undo_compile_if_no_faster(run: TrainingSetup, step: int, seconds: list, progress) -> bool:
    """COMPILE_TRIAL_STEPS steps after recipe auto compiled (the first of them pays the compile), compare the
    compiled steps with the eager ones and go back to eager forwards if they are not faster. Whether it undid."""
    if len(seconds) != AUTO_COMPILE_AFTER + 1 + COMPILE_TRIAL_STEPS:
        return False
    eager, compiled = seconds[1:AUTO_COMPILE_AFTER], seconds[AUTO_COMPILE_AFTER + 1 :]
    keep, why = compile_kept(eager, compiled)
    if not keep:
        uncompile_decoder_layers(run.bare_model)
    progress.message(f"after step {step}: {why}")
    return not keep


def _plan_for_time(run: TrainingSetup, config, budget: TimeBudget, step: int, result, metrics) -> None:
    """max_time: after steps 3, 6, 12, ... plan the schedule to end at the last step that fits in the time."""
    fits = budget.last_step_that_fits(step)
    if fits is None:
        return
    planned = max(step, min(run.total_steps, least_over_processes(run.accelerator, fits)))
    if planned != result.total_steps:
        replanned = replan_schedule(run.scheduler, config, step, planned) or "the learning rate is unchanged"
        result.total_steps = planned
        metrics.set_total_steps(planned)
        metrics.progress.message(
            f"{budget.describe()}: {planned} of {run.total_steps} steps fit; {replanned}"
        )


def _load_best(best: BestCheckpoint, run: TrainingSetup, state: TrainState, progress) -> bool:
    """load_best_at_end: the best checkpoint's trainable weights into the model; whether there was one."""
    step = best.load_into(run.bare_model, state)
    if step is None:
        progress.message("load_best_at_end: no validation loss was measured, so the last step's weights stay")
        return False
    progress.message(
        f"loaded the best checkpoint's weights: step {step}, validation loss {state.best_validation:.4f}"
    )
    return True


def _note(progress: TrainingProgress, text: str | None) -> None:
    if text:
        progress.message(text)


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
    """Checkpoint `state` once per step, on the main process (FSDP/DeepSpeed: every rank, its shards); then
    `on_checkpoint` (one process only), leaving the RNG untouched.

    A second Ctrl-C/SIGTERM during the save waits for it to complete (then stops), so the checkpoint of the last
    finished step is always whole.
    """
    import torch

    if any(p.name == f"step-{state.step}" for p in list_checkpoints(run_dir)):
        return None  # every rank sees the same folder: the last save ended with all ranks waiting for it
    if (
        accelerator.distributed_type.value in SHARDED_ENGINES
    ):  # every rank writes its shards: train/sharded.py
        with signals_wait_for_save(stop if stop is not None else {}):
            return save_sharded_checkpoint(
                run_dir, accelerator, model, optimizer, scheduler, state, keep=keep, config=config
            )
    if not accelerator.is_main_process:
        return None
    bare_model = unwrap_model(accelerator, model)
    with signals_wait_for_save(stop if stop is not None else {}):
        path = save_checkpoint(run_dir, bare_model, optimizer, scheduler, state, keep=keep, config=config)
    if on_checkpoint is not None:
        with torch.random.fork_rng(devices=[]):
            on_checkpoint(bare_model, state.step)
        model.train()
    return path


def save_trained(model, tokenizer, run_dir: Path, state_dict: dict | None = None) -> Path:
    """Save a LoRA run's adapter to <run>/adapter (PEFT format) or a full run's model to <run>/model.
    `state_dict`: a sharded run's gathered weights (TrainResult.gathered_state): the same folder as one process
    writes (PEFT keeps only the adapter's entries of it)."""
    target = run_dir / ("adapter" if is_peft(model) else "model")
    save = save_active_adapter if is_peft(model) else save_pretrained
    save(model, target, **({"state_dict": state_dict} if state_dict is not None else {}))
    if target.name == "model":
        tokenizer.save_pretrained(target)
    return target
