"""Everything the training loop needs before step 1: CPU threads, the Accelerator, the order of the examples,
the total steps, the optimizer and scheduler, the prepared model; then the starting state, fresh (with the
automatic micro batch size) or a checkpoint's.

    setup = set_up_training(model, tokenizer, data, config, run_dir, precision="fp32", device="cpu")
    result = starting_result(setup, data, config, run_dir, progress, precision="fp32")
    result.state.step   # 0, or the resumed checkpoint's step

A resume whose length (max_steps, epochs) differs from the checkpoint's plan re-plans the rest of the learning
rate schedule (train/schedule.py) and says so.
"""

from __future__ import annotations

import math
import os
import warnings
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tuneforge.data.examples import PreparedData
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.hardware import RunThreads, choose_threads, cpu_threads_words, usable_cores
from tuneforge.models.kind import is_peft, is_quantized
from tuneforge.models.saving import deepspeed_not_imported
from tuneforge.train.batches import StepOrder, planned_steps
from tuneforge.train.checkpoint import (
    apply_checkpoint,
    check_identity,
    check_resume_config,
    open_resume_checkpoint,
    run_identity,
)
from tuneforge.train.dropout import quick_dropout
from tuneforge.train.fused import compile_decoder_layers, lean_forwards
from tuneforge.train.host_memory import reuse_freed_memory
from tuneforge.train.levers import compile_kind
from tuneforge.train.memory import auto_micro_batch_size, enable_gradient_checkpointing
from tuneforge.train.optim import build_optimizer, build_scheduler, ratio_warmup_steps
from tuneforge.train.progress import TrainingProgress
from tuneforge.train.schedule import follow_plan, replan_schedule
from tuneforge.train.sharded import apply_sharded_checkpoint, check_engine
from tuneforge.train.state import TrainResult, TrainState


@dataclass
class TrainingSetup:
    """The parts of a run, built once: `model` is Accelerate's (DDP/FSDP/DeepSpeed wrapper), `bare_model` the
    model underneath."""

    accelerator: Any
    order: StepOrder
    total_steps: int
    model: Any
    bare_model: Any
    optimizer: Any
    scheduler: Any
    trainable: list  # the parameters the optimizer moves (gradient clipping)
    direct_head: bool  # call the decoder and head directly (one process): skips the wrapper's forward
    lean: AbstractContextManager  # what the steps run in: lean forwards, CPU dropout masks and memory reuse
    pad_token_id: int
    threads_note: str | None  # the CPU thread choice, when it is not one per core
    threads: RunThreads  # fewer while other processes hold cores, when chosen from the free cores
    run_dir: Path
    # recipe auto, compile not given: the loop compiles after timing its first steps if the run repays it
    compile_kind: str | None = None  # levers.COMPILE_SPEEDUP's row for this machine; None: never auto


def set_up_training(model, tokenizer, data: PreparedData, config, run_dir: Path, precision: str, device: str):
    import torch

    threads, threads_note = cpu_threads(config.num_threads)
    torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = _accelerator(precision, device, config, run_dir)
    data_seed = config.data_seed if config.data_seed is not None else config.seed
    order = StepOrder(
        len(data.train),
        config.examples_per_step,
        data_seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    if order.steps_per_epoch() == 0:  # every process needs an example of each step
        raise ConfigError(
            f"{len(data.train)} training examples in steps of {config.examples_per_step} cannot give each of "
            f"the {accelerator.num_processes} processes one; train on more data, with a batch_size of at "
            "least the number of processes, or with fewer processes"
        )
    total_steps = planned_steps(config, len(data.train), accelerator.num_processes)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    torch_optimizer = build_optimizer(model, config)
    deepspeed = accelerator.distributed_type.value == "DEEPSPEED"
    if deepspeed:
        _size_deepspeed_micro_batch(accelerator, config)
    model, optimizer = accelerator.prepare(model, torch_optimizer)
    # The schedule drives the optimizer that steps. DeepSpeed's engine steps its own: with offload Accelerate
    # swaps AdamW for DeepSpeedCPUAdam, and loading a checkpoint gives that one new param groups, so there the
    # schedule is built on the torch optimizer inside the engine's ZeRO optimizer (resumed or not).
    stepped = getattr(model.optimizer, "optimizer", model.optimizer) if deepspeed else torch_optimizer
    scheduler = build_scheduler(stepped, config, total_steps)
    model.train()
    bare_model = unwrap_model(accelerator, model)
    uncompilable = why_not_compiled(bare_model, accelerator.device.type)
    if config.compile and uncompilable:
        warnings.warn(f"compile: true not applied: {uncompilable}; the blocks run eager", stacklevel=2)
    elif config.compile:
        compile_decoder_layers(bare_model)
    # Lean LoRA reads lora_A's weight without calling lora_A; DeepSpeed ZeRO-3 and FSDP gather sharded weights in
    # module hooks, so there PEFT's own forward runs (DDP and one process keep the whole weights).
    lean_lora_layers = accelerator.distributed_type.value not in ("DEEPSPEED", "FSDP", "MEGATRON_LM")
    return TrainingSetup(
        accelerator=accelerator,
        order=order,
        total_steps=total_steps,
        model=model,
        bare_model=bare_model,
        optimizer=optimizer,
        scheduler=scheduler,
        trainable=[p for p in model.parameters() if p.requires_grad],
        # the wrapper's forward is what DDP/FSDP need for gradient sync, so only one process skips it
        direct_head=accelerator.num_processes == 1,
        lean=step_forwards(bare_model, config.lean_layers, lean_lora_layers, accelerator.device.type),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        threads_note=threads_note if threads != len(usable_cores()) else None,
        threads=RunThreads(threads, _thread_mode(config, accelerator)),
        run_dir=run_dir,
        compile_kind=compile_kind(accelerator.device.type, precision)
        if _may_auto_compile(config, accelerator) and not uncompilable
        else None,
    )


@contextmanager
def step_forwards(model, lean_layers: bool, lean_lora_layers: bool, device: str):
    """What a run's steps run in: on a CPU quick LoRA dropout masks (train/dropout.py; lean_layers or not, so
    the losses do not depend on it) and freed memory kept for the next step (train/host_memory.py; on jemalloc
    only where adapters train: never purging raised a full fine-tune's peak 250-540 MB), and the lean forwards
    of train/fused.py unless lean_layers is off."""
    with ExitStack() as stack:
        if device == "cpu":
            stack.enter_context(quick_dropout(model))
            stack.enter_context(reuse_freed_memory(on_jemalloc=is_peft(model)))
        if lean_layers:
            stack.enter_context(lean_forwards(model, lora=lean_lora_layers, attention=device == "cpu"))
        yield


def why_not_compiled(model, device: str) -> str | None:
    """Why torch.compile must not run this model's blocks here, or None. On a CPU with AVX512-BF16,
    bitsandbytes repacks a 4-bit weight into its CPU kernel's layout whenever it runs without gradients
    (validation, sample generation) and back when saved, and a compiled block then fails on the other layout
    (measured: "expected size 165888==576" in QLoRA's first compiled step)."""
    if device != "cpu" or not is_quantized(model):
        return None
    from bitsandbytes.functional import has_avx512bf16

    if has_avx512bf16():
        return "bitsandbytes changes a 4-bit weight's layout between passes on this CPU (AVX512-BF16)"
    return None


def _may_auto_compile(config, accelerator) -> bool:
    """recipe auto may turn compile on (measured, in the loop) when the user left it unset, on one process and
    without gradient checkpointing (compile is tested on neither combination)."""
    return (
        config.recipe == "auto"
        and not config.compile
        and "compile" not in config.given_keys
        and accelerator.num_processes == 1
        and not config.gradient_checkpointing
    )


def _thread_mode(config, accelerator) -> str:
    """hardware.RunThreads' mode: threads chosen from the free cores follow them, given ones are kept."""
    if accelerator.device.type != "cpu" or accelerator.num_processes > 1:
        return "off"
    return "given" if config.num_threads or _launcher_threads() else "follow"


def _launcher_threads() -> int | None:
    launcher = os.environ.get("OMP_NUM_THREADS", "")
    return int(launcher) if launcher.isdigit() and int(launcher) > 0 else None


def cpu_threads(num_threads: int | None) -> tuple[int, str]:
    """Torch's CPU threads and why: num_threads, else OMP_NUM_THREADS (torchrun sets 1 per process), else one
    per free core (hardware.choose_threads)."""
    launcher = _launcher_threads()
    if not num_threads and launcher:
        return launcher, f"{cpu_threads_words(launcher)} (OMP_NUM_THREADS)"
    return choose_threads(num_threads)


def starting_result(
    setup: TrainingSetup,
    data: PreparedData,
    config,
    run_dir: Path,
    progress: TrainingProgress,
    precision: str,
) -> TrainResult:
    """The run's result-to-be and its state: fresh, or the checkpoint's (which keeps its micro batch size)."""
    state = TrainState(micro_batch_size=config.micro_batch_size, identity=run_identity(config, data))
    result = TrainResult(run_dir=run_dir, total_steps=setup.total_steps, state=state)
    if config.resume_from:
        say = partial(tell, progress)
        result.resumed_from, files = open_resume_checkpoint(run_dir, config.resume_from, say)
        check_identity(result.resumed_from, state.identity)
        check_resume_config(result.resumed_from, files, config, state.identity, say)
        built = setup.scheduler.schedule_plan
        check_engine(result.resumed_from, files.get("engine"), setup.accelerator)
        if "engine" in files:  # a sharded run's checkpoint: every rank loads its shards (train/sharded.py)
            result.state = state = apply_sharded_checkpoint(
                result.resumed_from, files, setup.accelerator, setup.model, setup.optimizer, setup.scheduler
            )
        else:
            result.state = state = apply_checkpoint(
                result.resumed_from, files, setup.bare_model, setup.optimizer, setup.scheduler
            )
        plan = files["scheduler"].get("schedule_plan") or _plan_of_old_checkpoint(files, config, setup)
        if plan != built:
            follow_plan(setup.scheduler, config, plan)
        replanned = replan_schedule(setup.scheduler, config, state.step, setup.total_steps)
        if replanned:
            say(
                f"the checkpoint's learning rate schedule was planned for {plan[-1]['total_steps']} steps and "
                f"this run has {setup.total_steps}, so it is re-planned: {replanned}"
            )
        progress.message(f"resumed from {result.resumed_from} at step {state.step}/{setup.total_steps}")
    elif config.auto_micro_batch:
        longest = max(len(e["input_ids"]) for e in data.train)
        per_process = min(config.examples_per_step, -(-len(data.train) // setup.accelerator.num_processes))
        state.micro_batch_size, why = auto_micro_batch_size(
            setup.bare_model, per_process, longest, precision, setup.accelerator.device
        )
        progress.message(why)
    return result


def _plan_of_old_checkpoint(files: dict, config, setup: TrainingSetup) -> list[dict]:
    """A checkpoint from before schedules carried their plan: planned from the settings it was saved with."""
    saved = files.get("config") or {}
    total = saved.get("max_steps") or math.ceil(saved.get("epochs", 0) * setup.order.steps_per_epoch())
    if not total:
        return setup.scheduler.schedule_plan
    # the checkpoint's own warm-up: recipe auto may choose another for this run's length
    saved_warmup = saved.get("warmup_steps") or ratio_warmup_steps(saved.get("warmup_ratio") or 0.0, total)
    return [{"warmup_steps": saved_warmup, "total_steps": max(1, total)}]


def tell(progress: TrainingProgress, text: str) -> None:
    """A message that must be seen even with the progress display off (a warning then)."""
    if progress.enabled:
        progress.message(text)
    else:
        warnings.warn(text, stacklevel=3)


def _size_deepspeed_micro_batch(accelerator, config) -> None:
    """DeepSpeed's prepare() reads its micro batch from a dataloader, which the loop does not use (it batches
    each step itself, train/batches.py), so say it here; DeepSpeed only checks and reports it."""
    deepspeed_config = accelerator.state.deepspeed_plugin.deepspeed_config
    if deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        micro = config.micro_batch_size
        if not isinstance(micro, int):  # auto: sized later from free memory; one process's share of a step
            micro = max(1, config.examples_per_step // accelerator.num_processes)
        deepspeed_config["train_micro_batch_size_per_gpu"] = micro


def unwrap_model(accelerator, model, keep_fp32_wrapper: bool = True):
    """accelerator.unwrap_model, without importing DeepSpeed when the run has not (deepspeed_not_imported)."""
    with deepspeed_not_imported():
        return accelerator.unwrap_model(model, keep_fp32_wrapper=keep_fp32_wrapper)


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
