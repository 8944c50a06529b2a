"""Before a run: how many parameters it trains, how much memory it needs (by part) and, measured, how long it takes.

    from tuneforge.config import RunConfig
    from tuneforge.train.estimate import estimate_run
    print(estimate_run(RunConfig(model="default", method="qlora", micro_batch_size=4)).describe())

The arithmetic is EleutherAI's "Transformer Math 101": weights at their stored width (fp32 4 bytes, bf16/fp16 2,
4-bit NF4 0.5 plus one fp32 scale per 64 weights), gradients and AdamW's two moments in fp32 for every trainable
weight (tuneforge keeps LoRA adapters and full fine-tunes in fp32), activations from train/memory.py's per-token
count (what `micro_batch_size: auto` plans with), plus the runtime itself (torch and transformers loaded).
Sharding divides per process: FSDP full shard / ZeRO-3 split weights, gradients and optimizer states; ZeRO-2
splits gradients and optimizer states; offload moves weights and optimizer states to CPU RAM.
`measure=True` times a few real forward/backward passes to give time per step and per epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

GIB = 1024**3
RUNTIME_BYTES = {"cpu": int(0.55 * GIB), "cuda": int(0.5 * GIB)}  # torch+transformers loaded / CUDA context
NF4_BYTES = 0.5 + 4 / 64  # 4 bits a weight and an fp32 absmax per 64-weight block
# Sharding strategies: which parts are split over the processes, and which leave the device (offload).
SHARDING = {
    "none": ((), ()),
    "ddp": ((), ()),
    "fsdp": (("weights", "gradients", "optimizer"), ()),
    "fsdp_offload": (("weights", "gradients", "optimizer"), ("weights", "optimizer")),
    "zero2": (("gradients", "optimizer"), ()),
    "zero3": (("weights", "gradients", "optimizer"), ()),
    "zero3_offload": (("weights", "gradients", "optimizer"), ("weights", "optimizer")),
}


@dataclass
class Estimate:
    """What a run needs, per process; bytes unless named otherwise."""

    parameters: int
    trainable_parameters: int
    weights: int
    gradients: int
    optimizer: int
    activations: int  # one micro batch's saved activations and the loss head's chunk
    runtime: int  # the framework itself
    offloaded: int = 0  # bytes moved to CPU RAM by offload (not in total)
    tokens_per_step: int = 0
    world_size: int = 1
    sharding: str = "none"
    free: int | None = None  # free memory of the device the run uses
    seconds_per_step: float | None = None  # measured (measure=True)
    seconds_per_epoch: float | None = None
    suggestions: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime

    @property
    def fits(self) -> bool | None:
        return None if self.free is None else self.total <= self.free

    def describe(self) -> str:
        gib = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
        lines = [
            f"parameters: {self.parameters:,}, trainable: {self.trainable_parameters:,} "
            f"({100 * self.trainable_parameters / max(self.parameters, 1):.2f}%)",
            f"memory per process: {gib(self.total)} = weights {gib(self.weights)} + gradients "
            f"{gib(self.gradients)} + optimizer states {gib(self.optimizer)} + activations "
            f"{gib(self.activations)} + runtime {gib(self.runtime)}"
            + (f" ({gib(self.offloaded)} offloaded to CPU RAM)" if self.offloaded else "")
            + (f"; sharding {self.sharding} over {self.world_size} processes" if self.world_size > 1 else ""),
            f"tokens per step: up to {self.tokens_per_step:,}",
        ]
        if self.seconds_per_step is not None:
            epoch = f", {self.seconds_per_epoch / 60:.1f} min per epoch" if self.seconds_per_epoch else ""
            lines.append(f"time (measured): {self.seconds_per_step:.2f} s per step{epoch}")
        if self.free is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"{verdict}: {gib(self.free)} free")
        lines += [f"to fit: {s}" for s in self.suggestions]
        return "\n".join(lines)


def estimate_run(
    config,
    model=None,
    *,
    world_size: int = 1,
    sharding: str = "none",
    device: str | None = None,
    measure: bool = False,
    n_examples: int | None = None,
    measure_steps: int = 2,
) -> Estimate:
    """The estimate for `config`; `model` (prepared for its method) is read if given, else built on the meta
    device from config.model (nothing is downloaded beyond its config). `measure` needs `model`."""
    from tuneforge.hardware import pick_device

    if sharding not in SHARDING:
        from tuneforge.errors import ConfigError

        raise ConfigError(
            f"sharding {sharding!r} is not one tuneforge knows; use one of {', '.join(SHARDING)}"
        )
    device = pick_device(device or getattr(config, "device", "auto") or "auto")
    precision = _precision(config, device)
    micro = 1 if config.auto_micro_batch else config.micro_batch_size
    seq_len = config.cutoff_len
    counted = model if model is not None else _meta_model(config)
    estimate = _arithmetic(counted, config, precision, micro, seq_len, world_size, sharding, device)
    estimate.tokens_per_step = config.examples_per_step * seq_len
    if measure:
        if model is None:
            from tuneforge.errors import ConfigError

            raise ConfigError("estimate measure=True needs the loaded model; pass model=")
        estimate.seconds_per_step = _measure_step(
            model, micro, seq_len, config, world_size, measure_steps, precision
        )
        if n_examples:
            estimate.seconds_per_epoch = estimate.seconds_per_step * math.ceil(
                n_examples / config.examples_per_step
            )
    from tuneforge.train.memory import free_memory

    estimate.free = free_memory(device)
    if not estimate.fits:
        estimate.suggestions = _suggestions(
            counted, config, precision, micro, seq_len, world_size, sharding, device, estimate.free
        )
    return estimate


def _precision(config, device: str) -> str:
    from tuneforge.hardware import pick_precision

    return pick_precision(getattr(config, "precision", "auto") or "auto", device)


def _meta_model(config):
    """The model of config.model with its method's LoRA attached, on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tuneforge.models.loading import resolve

    model_config = AutoConfig.from_pretrained(
        resolve(config.model).path, trust_remote_code=getattr(config, "trust_remote_code", False)
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    if config.method in ("lora", "qlora"):
        from tuneforge.models.adapters import attach_lora

        model = attach_lora(model, config.rank, config.alpha, 0.0, list(config.target_modules))
    return model


def _quantized_names(model) -> set[str]:
    """Weights QLoRA stores in 4/8 bits: every Linear's weight except the output head and LoRA's own."""
    import torch

    names = set()
    for name, module in model.named_modules():
        # bitsandbytes' Linear4bit/Linear8bitLt are Linear subclasses: a quantized model counts the same
        if isinstance(module, torch.nn.Linear) and "lora_" not in name and not name.endswith("lm_head"):
            names.add(f"{name}.weight")
    return names


def _arithmetic(model, config, precision, micro, seq_len, world_size, sharding, device) -> Estimate:
    from tuneforge.train.loss import CHUNK_TOKENS, _causal_lm
    from tuneforge.train.memory import _dims, activation_bytes_per_token

    compute_bytes = 4 if precision == "fp32" else 2
    quantized = _quantized_names(model) if config.method == "qlora" else set()
    quant_bytes = NF4_BYTES if getattr(config, "bits", 4) == 4 else 1 + 4 / 64
    total = trainable = 0
    weights = 0.0
    seen = set()
    for name, param in model.named_parameters():
        if id(param) in seen:  # tied embeddings/head count once
            continue
        seen.add(id(param))
        n = _numel(param)
        total += n
        if param.requires_grad:
            trainable += n
            weights += 4 * n  # LoRA adapters and full fine-tunes train in fp32
        elif name.removeprefix("base_model.model.") in quantized or name in quantized:
            weights += quant_bytes * n
        else:
            weights += compute_bytes * n
    gradients = 4 * trainable
    optimizer = _optimizer_bytes_per_weight(config.optimizer) * trainable
    model_config = _causal_lm(model).config
    layers, hidden = _dims(model_config)[:2]
    per_token = activation_bytes_per_token(model_config, seq_len, precision)
    if config.gradient_checkpointing:  # each layer keeps only its input; one layer is recomputed at a time
        per_token = layers * hidden * compute_bytes + per_token // max(layers, 1)
    head = CHUNK_TOKENS * _dims(model_config)[4] * 4 * 2
    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer}
    split, offload = SHARDING[sharding]
    offloaded = 0.0
    for part in split:
        parts[part] /= max(world_size, 1)
    for part in offload:
        offloaded += parts[part]
        parts[part] = 0.0
    return Estimate(
        parameters=total,
        trainable_parameters=trainable,
        weights=int(parts["weights"]),
        gradients=int(parts["gradients"]),
        optimizer=int(parts["optimizer"]),
        activations=int(per_token * seq_len * micro + head),
        runtime=RUNTIME_BYTES.get(device, 0),
        offloaded=int(offloaded),
        world_size=world_size,
        sharding=sharding,
    )


def _numel(param) -> int:
    # bitsandbytes packs two 4-bit weights a byte; its Params4bit remembers the real shape
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return int(math.prod(shape)) if shape is not None else param.numel()


def _optimizer_bytes_per_weight(optimizer: str) -> int:
    if "8bit" in optimizer:
        return 2  # two 8-bit moments
    if optimizer == "sgd":
        return 4  # momentum
    return 8  # AdamW: two fp32 moments


def _suggestions(model, config, precision, micro, seq_len, world_size, sharding, device, free) -> list[str]:
    """Settings that bring the estimate under `free`, cheapest change first."""
    tries = []
    for smaller in (micro // 2, micro // 4, 1):
        if 1 <= smaller < micro:
            tries.append((f"micro_batch_size: {smaller}", config.replace(micro_batch_size=smaller), sharding))
    if not config.gradient_checkpointing:
        tries.append(("gradient_checkpointing: true", config.replace(gradient_checkpointing=True), sharding))
    if config.method != "qlora":
        tries.append(("method: qlora (a 4-bit base)", config.replace(method="qlora"), sharding))
    if world_size > 1 and sharding != "fsdp_offload":
        tries.append(
            ("FSDP with CPU offload (examples/distributed/fsdp_offload.yaml)", config, "fsdp_offload")
        )
    found = []
    for words, changed, strategy in tries:
        counted = model if changed.method == config.method else _meta_model(changed)
        if (
            _arithmetic(
                counted,
                changed,
                precision,
                1 if changed.auto_micro_batch else changed.micro_batch_size,
                seq_len,
                world_size,
                strategy,
                device,
            ).total
            <= free
        ):
            found.append(words)
            if len(found) == 2:
                break
    return found or [
        f"none of micro batch 1, gradient checkpointing, QLoRA fits in {free / GIB:.1f} GiB: use a "
        "smaller model or shard it over more GPUs"
    ]


def _measure_step(model, micro, seq_len, config, world_size, steps, precision) -> float:
    """Seconds per optimizer step: a few timed forward/backward passes of one micro batch, times accumulation."""
    import torch

    from tuneforge.hardware import torch_dtype

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (micro, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    autocast = torch.autocast(device.type, dtype=torch_dtype(precision), enabled=precision != "fp32")
    was_training = model.training
    model.train()
    timings = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(steps + 1):  # the first pass warms caches and kernels: not timed
            start = time.perf_counter()
            with autocast:
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            timings.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    accumulation = math.ceil(config.examples_per_step / world_size / micro)
    return sum(timings[1:]) / max(len(timings) - 1, 1) * accumulation
