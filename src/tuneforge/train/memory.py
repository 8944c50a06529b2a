"""How much memory a training run needs, and the largest micro batch that fits the machine it runs on.

    estimate = training_memory(model, seq_len=256, micro_batch_size=4, precision="fp32")   # bytes, by part
    micro = auto_micro_batch_size(model, batch_size=1024, seq_len=256, precision="fp32", device="cpu")
    enable_gradient_checkpointing(model)   # config key gradient_checkpointing: true

Seed 000 asks people to find their micro batch by trial and error ("lower it until it stops running out of
memory"); `micro_batch_size: auto` does it from an estimate, and the loop's out-of-memory back-off stays the
safety net when the estimate is wrong. The activation estimate counts what a decoder layer keeps for the
backward pass per token (norm inputs, q/k/v/o and MLP inputs and outputs, attention probabilities when they are
materialised); measured on SmolLM2-135M at seq 256 (benchmarks/estimate_vs_measured.py) whole-run totals
are within 25% of the measured peak.
"""

from __future__ import annotations

from dataclasses import dataclass

# The allocator never hands all freed memory back and a step's peak exceeds its activations (measured: the
# peak RSS of step 4 is ~1.4x the first step's growth on CPU), so only this share of free memory is planned for.
USABLE_FRACTION = 0.6
FRAGMENTATION = 1.5


@dataclass
class MemoryEstimate:
    """Bytes a run needs beyond the loaded weights."""

    trainable: int  # trainable weights' gradients + optimizer moments (fp32)
    activations: int  # one micro batch's saved activations
    head: int  # one chunk of the output layer's logits and their gradient


def _dims(config) -> tuple[int, int, int, int, int]:
    # 0 (not None) when absent: falls through `or` alike, and keeps the type an int
    layers = getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 1)
    hidden = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 1)
    heads = getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 1)
    inner = getattr(config, "intermediate_size", 0) or getattr(config, "n_inner", 0) or 4 * hidden
    vocab = getattr(config, "vocab_size", 32000)
    return layers, hidden, heads, inner, vocab


def activation_bytes_per_token(config, seq_len: int, precision: str, attention_kept: bool = True) -> int:
    """Bytes a token's activations take until the backward pass; `attention_kept`: the attention
    probabilities are materialised (train/attention.py's CPU path; SDPA's flash kernels keep none)."""
    layers, hidden, heads, inner, _ = _dims(config)
    values = 8 * hidden + 4 * inner + (2 * heads * seq_len if attention_kept else 0)  # per token per layer
    bytes_per_value = (
        4 if precision == "fp32" else 3
    )  # mixed precision keeps fp32 norms/residuals beside bf16
    return layers * values * bytes_per_value


def training_memory(model, seq_len: int, micro_batch_size: int, precision: str) -> MemoryEstimate:
    from tuneforge.train.loss import CHUNK_TOKENS, _causal_lm

    config = _causal_lm(model).config
    trainable = sum(p.numel() * 4 * 3 for p in model.parameters() if p.requires_grad)  # fp32 grad, m, v
    activations = activation_bytes_per_token(config, seq_len, precision) * seq_len * micro_batch_size
    head = CHUNK_TOKENS * _dims(config)[4] * 4 * 2  # the fused loss holds one chunk at a time
    return MemoryEstimate(trainable, activations, head)


def free_memory(device) -> int:
    """Bytes this process could still allocate on `device` (CUDA: free device memory; CPU: available RAM)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def auto_micro_batch_size(
    model, batch_size: int, seq_len: int, precision: str, device, available: int | None = None
) -> tuple[int, str]:
    """The largest power of two <= batch_size whose micro batch is estimated to fit; and why, in words.
    `available`: the free memory to plan with (default: what is free now, the model's weights loaded)."""
    available = free_memory(device) if available is None else available
    per_example = training_memory(model, seq_len, 1, precision)
    budget = available * USABLE_FRACTION - per_example.head * FRAGMENTATION - per_example.trainable
    micro = 1
    while micro * 2 <= batch_size and micro * 2 * per_example.activations * FRAGMENTATION <= budget:
        micro *= 2
    why = (
        f"micro_batch_size auto: {micro} (sequences up to {seq_len} tokens; estimated activations "
        f"{(micro * per_example.activations + per_example.head) / 1024**3:.2f} GiB of "
        f"{available / 1024**3:.1f} GiB free; gradient accumulation {-(-batch_size // micro)})"
    )
    return micro, why


def enable_gradient_checkpointing(model) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them (~25% slower)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path


def disable_gradient_checkpointing(model) -> None:
    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
