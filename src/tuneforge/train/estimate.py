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
`measure=True` times a few real forward/backward passes to give time per step and per epoch, and measures their
peak memory (CUDA: peak allocated; Linux CPU: the process's peak resident memory, reset before the passes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from tuneforge.models.kind import weight_count, weight_shape

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
    device: str = "cpu"
    micro_batch: str = ""  # the micro batch and sequence length the activations are counted for, in words
    free: int | None = None  # free memory of the device the run uses
    loaded: int = 0  # bytes the loaded model's weights already take (not in `free`, in `total`)
    seconds_per_step: float | None = None  # measured (measure=True)
    seconds_per_epoch: float | None = None
    # bytes at the peak of the measured passes (measure=True), where measurable
    measured_peak: int | None = None
    suggestions: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime

    @property
    def needed(self) -> int:
        """What must fit in `free`: on a CPU every process of the run takes this machine's RAM (offload too)."""
        if self.device != "cpu":
            return self.total
        return (self.total + self.offloaded) * self.world_size

    @property
    def fits(self) -> bool | None:
        return None if self.free is None else self.needed <= self.free + self.loaded

    def describe(self) -> str:
        gib = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
        lines = [
            f"parameters: {self.parameters:,}, trainable: {self.trainable_parameters:,} "
            f"({100 * self.trainable_parameters / max(self.parameters, 1):.2f}%)",
            f"memory per process: {gib(self.total)} = weights {gib(self.weights)} + gradients "
            f"{gib(self.gradients)} + optimizer states {gib(self.optimizer)} + activations "
            f"{gib(self.activations)}{f' ({self.micro_batch})' if self.micro_batch else ''} + runtime "
            f"{gib(self.runtime)}"
            + (f" ({gib(self.offloaded)} offloaded to CPU RAM)" if self.offloaded else "")
            + (f"; sharding {self.sharding} over {self.world_size} processes" if self.world_size > 1 else ""),
            f"tokens per step: up to {self.tokens_per_step:,}",
        ]
        if self.seconds_per_step is not None:
            epoch = f", {self.seconds_per_epoch / 60:.1f} min per epoch" if self.seconds_per_epoch else ""
            lines.append(f"time (measured): {self.seconds_per_step:.2f} s per step{epoch}")
        if self.measured_peak is not None and self.world_size == 1 and self.sharding == "none":
            # (one unsharded process is what the passes measure.) They take no optimizer step (the model stays as
            # it is), so its states are not allocated; CUDA's peak counts tensors, not the CUDA context
            context = self.runtime if self.device.startswith("cuda") else 0
            lines.append(
                f"memory (measured): {gib(self.measured_peak + self.optimizer + context)} = peak "
                f"{gib(self.measured_peak)} of the forward/backward passes + optimizer states "
                f"{gib(self.optimizer)}{f' + CUDA context {gib(context)}' if context else ''} (estimated: "
                f"the warm-up takes no optimizer step); {gib(self.total)} estimated"
            )
        if self.free is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            shared = (
                f" ({self.world_size} processes on this machine's RAM: {gib(self.needed)})"
                if self.device == "cpu" and self.world_size > 1
                else ""
            )
            held = f" besides the {gib(self.loaded)} the loaded weights hold" if self.loaded else ""
            lines.append(f"{verdict}: {gib(self.free)} free{held}{shared}")
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
    data=None,
) -> Estimate:
    """The estimate for `config`; `model` (prepared for its method) is read if given, else built on the meta
    device from config.model (nothing is downloaded beyond its config). `measure` needs `model`. With `data`
    (the PreparedData the run trains on) sequences are as long as its longest example (packed: cutoff_len)."""
    from tuneforge.errors import ConfigError
    from tuneforge.hardware import pick_device
    from tuneforge.train.memory import auto_micro_batch_size

    if sharding not in SHARDING:
        raise ConfigError(
            f"sharding {sharding!r} is not one tuneforge knows; use one of {', '.join(SHARDING)}"
        )
    if world_size < 1:
        raise ConfigError(f"world_size must be 1 or more processes; got {world_size}")
    device = pick_device(device or getattr(config, "device", "auto") or "auto")
    precision = _precision(config, device)
    seq_len = config.cutoff_len
    if data is not None:
        n_examples = len(data.train)
        if not getattr(config, "packing", False) and n_examples:
            seq_len = min(seq_len, _longest(data.train))
    counted = model if model is not None else _meta_model(config)
    if config.auto_micro_batch:  # what the run will pick (train/setup.py asks the same function)
        per_process = min(
            config.examples_per_step, -(-(n_examples or config.examples_per_step) // world_size)
        )
        available = None
        if model is None:  # a run picks after loading its weights: here they are not loaded yet
            from tuneforge.train.memory import free_memory

            unloaded = _arithmetic(counted, config, precision, 1, seq_len, world_size, sharding, device)
            available = max(0, free_memory(device) - unloaded.weights - unloaded.runtime)
        micro = auto_micro_batch_size(counted, per_process, seq_len, precision, device, available)[0]
    else:
        micro = config.micro_batch_size
    estimate = _arithmetic(counted, config, precision, micro, seq_len, world_size, sharding, device)
    estimate.micro_batch = (
        f"micro batch {micro}{' (auto)' if config.auto_micro_batch else ''} x {seq_len} tokens"
        + ("" if data is not None else ", every example cutoff_len long")
    )
    estimate.tokens_per_step = config.examples_per_step * seq_len
    if measure:
        if model is None:
            from tuneforge.errors import ConfigError

            raise ConfigError("estimate measure=True needs the loaded model; pass model=")
        estimate.seconds_per_step, estimate.measured_peak = _measure_step(
            model, micro, seq_len, config, world_size, measure_steps, precision
        )
        if n_examples:
            estimate.seconds_per_epoch = estimate.seconds_per_step * math.ceil(
                n_examples / config.examples_per_step
            )
    from tuneforge.train.memory import free_memory

    estimate.free = free_memory(device)
    if model is not None:  # its weights are loaded already: free memory no longer holds them, the total does
        estimate.loaded = sum(
            p.numel() * p.element_size() for p in _unique_parameters(model) if not p.is_meta
        )
    if not estimate.fits:
        estimate.suggestions = _suggestions(
            counted,
            config,
            precision,
            micro,
            seq_len,
            world_size,
            sharding,
            device,
            estimate.free + estimate.loaded,
        )
    return estimate


def _longest(examples) -> int:
    lengths = getattr(examples, "lengths", None)
    return max(lengths) if lengths is not None else max(len(e["input_ids"]) for e in examples)


def _precision(config, device: str) -> str:
    from tuneforge.hardware import pick_precision

    return pick_precision(getattr(config, "precision", "auto") or "auto", device)


def _meta_model(config):
    """The model of config.model (scratch: the one its n_layer/n_head/n_embd build) with its method's LoRA
    attached, on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tuneforge.models.loading import resolve

    if config.method == "scratch":
        return _meta_scratch_model(config)
    model_config = AutoConfig.from_pretrained(
        resolve(config.model).path, trust_remote_code=getattr(config, "trust_remote_code", False)
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    if config.method in ("lora", "qlora"):
        from tuneforge.models.adapters import attach_lora

        model = attach_lora(model, config.rank, config.alpha, 0.0, list(config.target_modules))
    return model


def _meta_scratch_model(config):
    """The scratch model the run builds (models/scratch.py), for the vocabulary it will have."""
    import torch

    from tuneforge.models.scratch import build_scratch_model

    if config.tokenizer == "train":
        vocabulary = _Vocabulary(config.vocab_size)
    else:
        from transformers import AutoTokenizer

        from tuneforge.models.loading import resolve

        vocabulary = AutoTokenizer.from_pretrained(resolve(config.model).path)
    size = dict(
        n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd, n_positions=config.n_positions
    )
    with torch.device("meta"):
        return build_scratch_model(config.architecture, vocabulary, **size, seed=0)


class _Vocabulary:
    """What build_scratch_model reads of a tokenizer not trained yet: its size and special tokens."""

    bos_token_id = eos_token_id = pad_token_id = 0

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


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
        n = weight_count(param)
        total += n
        if param.requires_grad:
            trainable += n
            weights += 4 * n  # LoRA adapters and full fine-tunes train in fp32
        elif name.removeprefix("base_model.model.") in quantized or name in quantized:
            weights += quant_bytes * n
        else:
            weights += compute_bytes * n
    gradients = 4 * trainable
    optimizer = _optimizer_bytes(config.optimizer, model)
    model_config = _causal_lm(model).config
    layers, hidden = _dims(model_config)[:2]
    per_token = activation_bytes_per_token(
        model_config, seq_len, precision, _attention_kept(model_config, device, micro, seq_len)
    )
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
        device=device,
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


def _attention_kept(model_config, device: str, micro: int, seq_len: int) -> bool:
    """Whether the run keeps attention probabilities: train/attention.py's matmul path on a CPU does, for
    short sequences, only with KEEP_PROBABILITIES (by default it makes them again in the backward pass, as
    SDPA's flash and memory-efficient kernels do: those keep one value a row)."""
    from tuneforge.train.attention import KEEP_PROBABILITIES, MAX_SEQUENCE, SCORE_ELEMENTS
    from tuneforge.train.memory import _dims

    heads = _dims(model_config)[2]
    return (
        device == "cpu"
        and KEEP_PROBABILITIES
        and seq_len <= MAX_SEQUENCE
        and micro * heads * seq_len**2 <= SCORE_ELEMENTS
    )


def _optimizer_bytes(optimizer: str, model) -> int:
    """The optimizer's state for the trainable weights (train/optim.py builds these)."""
    shapes = [weight_shape(p) for p in _unique_parameters(model) if p.requires_grad]
    if optimizer == "sgd":
        return 0  # plain SGD, no momentum
    if optimizer == "adafactor":  # factored second moment: a row and a column a matrix, no first moment
        return sum(
            4 * (shape[0] + math.prod(shape[1:])) if len(shape) > 1 else 4 * shape[0] for shape in shapes
        )
    per_weight = 2 if "8bit" in optimizer else 8  # two 8-bit or two fp32 moments (AdamW)
    return per_weight * sum(math.prod(shape) for shape in shapes)


def _unique_parameters(model):
    seen = set()
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            yield param


def _suggestions(model, config, precision, micro, seq_len, world_size, sharding, device, free) -> list[str]:
    """Settings that bring the estimate under `free`, cheapest change first; alone, then together."""
    tries = []
    for smaller in sorted({micro // 2, micro // 4, 1}, reverse=True):
        if 1 <= smaller < micro:
            tries.append((f"micro_batch_size: {smaller}", config.replace(micro_batch_size=smaller), sharding))
    least = config.replace(micro_batch_size=1)
    if not config.gradient_checkpointing:
        tries.append(("gradient_checkpointing: true", config.replace(gradient_checkpointing=True), sharding))
        if micro > 1:
            tries.append(
                (
                    "micro_batch_size: 1 and gradient_checkpointing: true",
                    least.replace(gradient_checkpointing=True),
                    sharding,
                )
            )
        least = least.replace(gradient_checkpointing=True)
    offload = "FSDP with CPU offload (examples/distributed/fsdp_offload.yaml)"
    if world_size > 1 and sharding != "fsdp_offload":
        tries.append((offload, config, "fsdp_offload"))
        tries.append((f"{offload}, micro_batch_size: 1 and gradient checkpointing", least, "fsdp_offload"))
    if config.method == "lora":  # a full fine-tune switched to QLoRA would train adapters only: not offered
        tries.append(("method: qlora (a 4-bit base)", config.replace(method="qlora"), sharding))
    found = []
    for words, changed, strategy in tries:
        counted = model if changed.method == config.method else _meta_model(changed)
        if (
            _arithmetic(
                counted,
                changed,
                precision,
                micro if changed.auto_micro_batch else changed.micro_batch_size,
                seq_len,
                world_size,
                strategy,
                device,
            ).needed
            <= free
        ):
            found.append(words)
            if len(found) == 2:
                break
    tried = ", ".join(words for words, _, _ in tries) or "nothing smaller to try"
    return found or [
        f"none of these fits in {free / GIB:.1f} GiB ({tried}): use a smaller model or more GPUs"
    ]


def _measure_step(model, micro, seq_len, config, world_size, steps, precision) -> tuple[float, int | None]:
    """(seconds per optimizer step, peak bytes or None): a few timed forward/backward passes of one micro batch
    through the loop's own code (its loss path and step forwards), times accumulation, and their peak memory."""
    import torch

    from tuneforge.hardware import torch_dtype
    from tuneforge.train.loss import batch_loss_sum
    from tuneforge.train.memory import disable_gradient_checkpointing, enable_gradient_checkpointing
    from tuneforge.train.setup import step_forwards

    device = next(model.parameters()).device
    reset = _reset_peak(device)
    ids = torch.randint(
        0, model.config.vocab_size, (micro, seq_len), generator=torch.Generator().manual_seed(0)
    )
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    batch = {key: value.to(device) for key, value in batch.items()}
    autocast = torch.autocast(device.type, dtype=torch_dtype(precision), enabled=precision != "fp32")
    was_training = model.training
    model.train()
    if config.gradient_checkpointing:  # as set_up_training does: the passes recompute, and keep less
        enable_gradient_checkpointing(model)
    timings = []
    with torch.random.fork_rng(devices=[]), step_forwards(model, config.lean_layers, True, device.type):
        for _ in range(steps + 1):  # the first pass warms caches and kernels: not timed
            start = time.perf_counter()
            with autocast:
                loss = batch_loss_sum(model, batch)
            loss.backward()
            del loss
            timings.append(time.perf_counter() - start)
    peak = _peak(device) if reset else None
    model.zero_grad(set_to_none=True)
    if config.gradient_checkpointing:
        disable_gradient_checkpointing(model)
    model.train(was_training)
    accumulation = math.ceil(config.examples_per_step / world_size / micro)
    return sum(timings[1:]) / max(len(timings) - 1, 1) * accumulation, peak


_CLEAR_REFS, _STATUS = "/proc/self/clear_refs", "/proc/self/status"


def _reset_peak(device) -> bool:
    """Start counting the peak from now, and say whether that worked: CUDA's allocator statistics; on Linux the
    process's resident peak (VmHWM; writing 5 to clear_refs resets it, since Linux 4.0). A lifetime peak
    (ru_maxrss) would count model loading's, so without a reset nothing is measured."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    if device.type != "cpu":
        return False
    try:
        with open(_CLEAR_REFS, "w") as file:
            file.write("5")
    except OSError:
        return False
    return True


def _peak(device) -> int | None:
    """Bytes at the peak since _reset_peak, or None where it cannot be read."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open(_STATUS) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
