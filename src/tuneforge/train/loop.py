"""The one training loop: every method (LoRA, QLoRA, full, scratch) runs through `train`.

    from tuneforge.train.loop import train
    model, result = train(model, tokenizer, prepared, config, run_dir=Path("runs/demo"))

Built on Accelerate so the same loop runs on one CPU or under `accelerate launch`/torchrun (DDP, FSDP,
DeepSpeed). We write the loop instead of using `transformers.Trainer` because the Trainer costs ~27% in bf16
on CPU here, and per-token loss across micro batches, exact resume and OOM back-off need control of the loop.
"""

from __future__ import annotations

import json
import math
import signal
import time
import warnings
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.data.batching import collate
from tuneforge.data.examples import PreparedData
from tuneforge.errors import TuneforgeError
from tuneforge.train.batches import StepOrder, split_micro_batches
from tuneforge.train.checkpoint import (
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from tuneforge.train.fused import lean_lora, lean_mlp
from tuneforge.train.loss import batch_loss_sum, count_loss_tokens, example_loss_tokens
from tuneforge.train.optim import build_optimizer, build_scheduler
from tuneforge.train.progress import TrainingProgress


@dataclass
class TrainResult:
    """What a run did: its folder, per-step losses, why it stopped and where the weights are."""

    run_dir: Path
    steps: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    validation_losses: list[tuple[int, float]] = field(default_factory=list)
    stopped_because: str = "finished"
    saved_to: Path | None = None
    train_tokens: int = 0
    seconds: float = 0.0
    resumed_from: Path | None = None
    micro_batch_size: int = 0  # after any out-of-memory back-off
    tokenizer: object = None  # the tokenizer the run trained with (a new one for scratch + tokenizer: train)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else 0.0

    @property
    def interrupted(self) -> bool:
        return self.stopped_because.startswith("interrupted")


def evaluate_loss(model, examples, micro_batch_size: int, pad_token_id: int, device, autocast=nullcontext,
                  direct: bool = True) -> float:
    """Mean per-token loss over `examples` (no gradient), computed exactly as the training loss is."""
    import torch

    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), micro_batch_size):
            batch = collate([examples[i] for i in range(start, min(start + micro_batch_size, len(examples)))],
                            pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                total += float(batch_loss_sum(model, batch, direct=direct))
            tokens += count_loss_tokens(batch["labels"])
    model.train(was_training)
    return total / max(tokens, 1)


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        text in str(error) for text in ("out of memory", "can't allocate memory", "DefaultCPUAllocator"))


class StepAbandoned(Exception):
    """Ctrl-C/SIGTERM arrived inside a step: drop its partial gradients and checkpoint the step before."""


@contextmanager
def graceful_interrupts(stop_flag: dict):
    """Turn Ctrl-C / SIGTERM into 'checkpoint and stop' instead of losing the run."""
    def handler(signum, frame):
        if stop_flag.get("signal"):  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        stop_flag["signal"] = signal.Signals(signum).name

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(ValueError):  # not the main thread (e.g. inside a UI worker): leave signals alone
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def compile_decoder_layers(model) -> int:
    """torch.compile each transformer block in place; returns how many were compiled.

    Per block rather than the whole model (as torchtune does): the blocks share one compiled graph, so
    compilation takes about as long as for a single block, and the chunked loss head stays eager.
    """
    import torch

    from tuneforge.train.loss import _causal_lm

    decoder = _causal_lm(model).base_model
    blocks = max((m for m in decoder.modules() if isinstance(m, torch.nn.ModuleList)), key=len, default=[])
    for block in blocks:
        block.compile()
    return len(blocks)


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
    accelerator = Accelerator(mixed_precision=mixed, cpu=device == "cpu", log_with=config.report_to or None,
                              project_dir=str(run_dir / "trackers"))
    if config.report_to:
        hyperparameters = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                           for k, v in config.to_dict().items()}
        accelerator.init_trackers(run_dir.name, config=hyperparameters)
    return accelerator


def run_identity(config, data: PreparedData) -> dict:
    """What a checkpoint must match to be resumed: model, method, rank and the data's fingerprint."""
    cache_dir = getattr(data, "cache_dir", None)  # the prepared-data cache is keyed by the data's fingerprint
    fingerprint = cache_dir.name if cache_dir else f"{len(data.train)} examples, {data.counts.get('train_tokens')} tokens"
    return {"model": config.model, "method": config.method, "rank": config.rank, "data_fingerprint": fingerprint}


def _check_identity(saved: dict, current: dict, checkpoint: Path) -> None:
    for key, value in current.items():
        if saved.get(key) != value:
            raise TuneforgeError(f"cannot resume from {checkpoint}: it was trained with {key} "
                                 f"{saved.get(key)!r} but this run has {value!r}; use the same {key} or start a "
                                 "new run without resume_from")


def train(model, tokenizer, data: PreparedData, config, run_dir: Path, precision: str = "fp32",
          device: str = "cpu", show_progress: bool = True, fail_micro_batches: int = 0, on_checkpoint=None):
    """Train `model` (already prepared for its method) on `data.train`; returns (model, TrainResult).

    `on_checkpoint(model, step)` runs after each checkpoint is written (e.g. the before/after gallery); it may
    sample freely, the RNG is restored afterwards. `fail_micro_batches` injects out-of-memory errors (tests).
    """
    import torch

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = _accelerator(precision, device, config, run_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    batch_size = config.examples_per_step
    data_seed = config.data_seed if config.data_seed is not None else config.seed
    order = StepOrder(len(data.train), batch_size, data_seed, rank=accelerator.process_index,
                      world_size=accelerator.num_processes)
    steps_per_epoch = order.steps_per_epoch()
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))

    if config.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    if config.compile:
        compile_decoder_layers(accelerator.unwrap_model(model))
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Calling the decoder and head directly skips the wrapper's forward, which DDP/FSDP need for gradient sync.
    direct_head = accelerator.num_processes == 1
    # Lean LoRA reads lora_A's weight without calling lora_A; DeepSpeed ZeRO-3 and FSDP gather sharded weights in
    # module hooks, so there PEFT's own forward runs (DDP and one process keep the whole weights).
    lean_lora_layers = accelerator.distributed_type.value not in ("DEEPSPEED", "FSDP", "MEGATRON_LM")

    progress = TrainingProgress(total_steps, enabled=show_progress and accelerator.is_main_process)
    micro_batch_size = config.micro_batch_size
    if config.auto_micro_batch and not config.resume_from:  # a resumed run keeps its checkpoint's split
        from tuneforge.train.memory import auto_micro_batch_size

        longest = max(len(e["input_ids"]) for e in data.train)
        per_process = min(batch_size, -(-len(data.train) // accelerator.num_processes))
        micro_batch_size, why = auto_micro_batch_size(accelerator.unwrap_model(model), per_process, longest,
                                                      precision, accelerator.device)
        progress.message(why)
    result = TrainResult(run_dir=run_dir, steps=0, total_steps=total_steps, micro_batch_size=micro_batch_size)
    identity = run_identity(config, data)
    state = {"step": 0, "losses": [], "validation_losses": [], "train_tokens": 0, "best_validation": None,
             "evaluations_without_improvement": 0, "micro_batch_size": micro_batch_size}
    if config.resume_from:
        checkpoint = find_checkpoint(run_dir, config.resume_from)
        saved = json.loads((checkpoint / "trainer_state.json").read_text())
        _check_identity(saved.get("identity", {}), identity, checkpoint)
        state = load_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler)
        result.resumed_from = checkpoint
        result.losses = list(state["losses"])
        result.validation_losses = [tuple(v) for v in state["validation_losses"]]
        result.train_tokens = state["train_tokens"]
    micro_batch_size = state["micro_batch_size"]
    start_step = state["step"]

    if result.resumed_from:
        progress.message(f"resumed from {result.resumed_from} at step {start_step}/{total_steps}")
    metrics_path = run_dir / "metrics.jsonl"
    if not config.resume_from and metrics_path.exists():
        metrics_path.unlink()  # a fresh run in a reused folder starts a fresh log
    stop: dict = {}
    start_time = time.perf_counter()
    window_tokens, window_start = 0, start_time
    epoch_cache: dict[int, list[list[int]]] = {}
    injected_failures = fail_micro_batches

    def checkpoint_now(step: int) -> Path | None:
        existing = {p.name for p in list_checkpoints(run_dir)}
        if f"step-{step}" in existing or not accelerator.is_main_process:
            return None
        snapshot = {**state, "identity": identity, "losses": result.losses,
                    "validation_losses": result.validation_losses, "train_tokens": result.train_tokens,
                    "micro_batch_size": micro_batch_size}
        path = save_checkpoint(run_dir, step, accelerator.unwrap_model(model), optimizer, scheduler, snapshot,
                               keep=config.save_total_limit)
        if on_checkpoint is not None:
            with torch.random.fork_rng(devices=[]):
                on_checkpoint(accelerator.unwrap_model(model), step)
            model.train()
        return path

    bare_model = accelerator.unwrap_model(model)
    with graceful_interrupts(stop), lean_mlp(bare_model), lean_lora(bare_model) if lean_lora_layers else nullcontext(), \
            metrics_path.open("a") as metrics:
        for step in range(start_step + 1, total_steps + 1):
            epoch, index_in_epoch = divmod(step - 1, steps_per_epoch)
            if epoch not in epoch_cache:  # a new seeded shuffle per epoch
                epoch_cache = {epoch: order.epoch(epoch)}
            step_indices = epoch_cache[epoch][index_in_epoch]
            examples = [data.train[i] for i in step_indices]
            rng_at_step_start = rng_state()  # an abandoned step is replayed exactly (dropout draws) on resume

            # Loss is averaged per token over the whole batch (all micro batches, all processes), so
            # batch_size=16/micro_batch_size=2 gives the same loss and update as micro_batch_size=16.
            local_tokens = sum(example_loss_tokens(e) for e in examples)
            global_tokens = int(accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device),
                                                   reduction="sum"))
            while True:  # retried with half the micro batch after an out-of-memory error
                micro_batches = split_micro_batches(list(range(len(examples))), micro_batch_size)
                step_loss = torch.zeros((), device=accelerator.device)
                try:
                    for i, micro in enumerate(micro_batches):
                        # A long step (seed 000: 1024 examples) can take minutes; a signal abandons it at the
                        # next micro batch. Multi-process runs finish the step so collectives stay matched.
                        if stop.get("signal") and accelerator.num_processes == 1:
                            raise StepAbandoned
                        batch = collate([examples[j] for j in micro], pad_id)
                        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                        sync = i == len(micro_batches) - 1
                        with nullcontext() if sync else accelerator.no_sync(model):
                            if injected_failures > 0:
                                injected_failures -= 1
                                raise torch.OutOfMemoryError("injected out of memory (test)")
                            with accelerator.autocast():
                                loss_sum = batch_loss_sum(model, batch, direct=direct_head)
                            # DDP averages gradients over processes; scale back up to a per-token mean.
                            accelerator.backward(loss_sum * accelerator.num_processes / max(global_tokens, 1))
                        step_loss += loss_sum.detach()
                        del loss_sum
                    break
                except StepAbandoned:
                    optimizer.zero_grad(set_to_none=True)
                    restore_rng_state(rng_at_step_start)
                    step_loss = None
                    break
                except Exception as error:
                    if not is_out_of_memory(error) or micro_batch_size == 1:
                        raise
                    optimizer.zero_grad(set_to_none=True)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    micro_batch_size //= 2
                    progress.message(f"out of memory at step {step}: micro_batch_size halved to {micro_batch_size} "
                                     f"(gradient accumulation x2, same batch of {len(examples)}); continuing")
            if step_loss is None:
                result.stopped_because = f"interrupted by {stop['signal']} during step {step}"
                checkpoint_now(step - 1)
                break
            grad_norm = accelerator.clip_grad_norm_(trainable, config.max_grad_norm or float("inf"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            loss = float(accelerator.reduce(step_loss, reduction="sum")) / max(global_tokens, 1)
            if not math.isfinite(loss):
                progress.close()
                last = list_checkpoints(run_dir)
                kept = f"; the last good checkpoint is {last[-1]}" if last else ""
                raise TuneforgeError(f"the loss became {loss} at step {step}; the run diverged — lower "
                                     f"learning_rate (now {config.learning_rate}) or use precision: fp32{kept}")
            if loss == 0.0:
                warnings.warn(f"training loss is exactly 0 at step {step}: something is broken (e.g. every "
                              "label masked, or a corrupted model)", stacklevel=2)
            result.losses.append(loss)
            result.steps = step
            result.train_tokens += global_tokens
            result.micro_batch_size = micro_batch_size
            window_tokens += global_tokens
            state["step"] = step

            validation_loss = None
            is_last = step == total_steps
            if data.validation and ((config.eval_steps and step % config.eval_steps == 0) or is_last):
                validation_loss = evaluate_loss(model, data.validation, micro_batch_size, pad_id,
                                                accelerator.device, accelerator.autocast, direct=direct_head)
                result.validation_losses.append((step, validation_loss))
                best = state["best_validation"]
                if best is None or validation_loss < best:
                    state["best_validation"], state["evaluations_without_improvement"] = validation_loss, 0
                else:
                    state["evaluations_without_improvement"] += 1

            if step % config.logging_steps == 0 or is_last or validation_loss is not None:
                now = time.perf_counter()
                tokens_per_second = window_tokens / max(now - window_start, 1e-9)
                logged_tokens, window_tokens, window_start = window_tokens, 0, now
                learning_rate = scheduler.get_last_lr()[0]
                record = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                          "loss": round(loss, 6), "learning_rate": learning_rate,
                          "grad_norm": round(float(grad_norm), 6), "tokens": logged_tokens,
                          "tokens_per_second": round(tokens_per_second, 1),
                          "elapsed_s": round(now - start_time, 2)}
                if validation_loss is not None:
                    record["validation_loss"] = round(validation_loss, 6)
                if accelerator.is_main_process:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if config.report_to:
                    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                progress.update(step, loss, learning_rate, tokens_per_second, validation_loss)

            if config.save_steps and (step % config.save_steps == 0 or is_last):
                checkpoint_now(step)
            if config.stop_at_loss and loss <= config.stop_at_loss:
                result.stopped_because = f"loss {loss:.4f} reached stop_at_loss {config.stop_at_loss}"
                break
            patience = config.early_stopping_patience
            if patience and state["evaluations_without_improvement"] >= patience:
                result.stopped_because = (f"early stopping: validation loss has not improved for {patience} "
                                          f"evaluations (best {state['best_validation']:.4f})")
                break
            if _any_process(accelerator, bool(stop.get("signal"))):
                stop.setdefault("signal", "a signal on another process")
                result.stopped_because = f"interrupted by {stop['signal']}"
                checkpoint_now(step)
                break

    progress.close()
    if config.report_to:
        accelerator.end_training()
    result.seconds = time.perf_counter() - start_time
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if config.gradient_checkpointing:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    model.eval()
    if result.stopped_because != "finished":
        progress.message(f"stopped: {result.stopped_because} (step {result.steps}/{total_steps})")
    return model, result


def _any_process(accelerator, flag: bool) -> bool:
    """True when `flag` is set on any process, so every process stops after the same step."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    return bool(accelerator.reduce(torch.tensor(int(flag), device=accelerator.device), reduction="max"))


def save_trained(model, tokenizer, run_dir: Path) -> Path:
    """Save a LoRA run's adapter to <run>/adapter (PEFT format) or a full run's model to <run>/model."""
    target = run_dir / ("adapter" if hasattr(model, "peft_config") else "model")
    model.save_pretrained(target)
    if target.name == "model":
        tokenizer.save_pretrained(target)
    return target
