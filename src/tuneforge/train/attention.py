"""Attention for training steps on a CPU: the scores made by two matmuls where that beats flash attention.

    with matmul_attention(model):            # the loop's lean forwards enter it on a CPU
        batch_loss_sum(model, batch).backward()

torch's CPU flash attention walks the sequence in blocks and its backward pass recomputes them; at training
shapes of short sequences that costs more than making the (query x key) scores outright with one batched
matmul, a softmax and a second matmul. Measured on SmolLM2-135M's shapes (9 query heads on 3 key/value heads,
head dim 64, bf16, 2 cores with AMX), forward and backward of one layer: batch 4 x 256 tokens 8.6-9.5 ms
flash, 5.2-8.3 ms here; 8 x 128 tokens 11.8 vs 2.5-3.6 ms; 2 x 512 about even (12 vs 10-13 ms); a whole
LoRA q,v step 1.84-1.89 -> 1.25-1.28 s (benchmarks/step_profile.py). So the matmul path runs for queries of at
most MAX_SEQUENCE tokens whose scores fit SCORE_ELEMENTS; anything else (longer sequences, attention dropout,
soft-capping, sinks, a float mask, a KV cache, a GPU) goes to transformers' own SDPA function unchanged. Like
flash attention, it does not keep the probabilities for the backward pass (batch x heads x seq x seq values,
4.7 MB a layer at 4 x 256 in bf16, 135 MB over SmolLM2's 30 layers) but makes them again there from the kept
queries and keys: one more (query x key) matmul and softmax a layer. It is a torch custom op, so a compiled
block calls the same kernels (measured against the alternatives in docs/training.md).

It is exact up to rounding: query heads are grouped by the key/value head they share (no repeated keys), the
causal or packed mask is applied before the softmax, and torch's CPU softmax accumulates in fp32 whatever the
input dtype (tests/unit/train/test_matmul_attention.py checks losses and gradients against SDPA's).
transformers has no such kernel (its "eager" attention repeats the key/value heads and upcasts the scores).
"""

from __future__ import annotations

from contextlib import contextmanager

NAME = "tuneforge_matmul"  # the attention implementation registered with transformers
MAX_SEQUENCE = 384  # longest query run by matmuls: about where flash attention's blocks catch up (measured)
SCORE_ELEMENTS = 1 << 23  # most (batch x heads x seq x seq) scores one layer may make: 16 MB in bf16
# Off by default: keeping them saves about 3 ms a layer of 4 x 256 tokens in the backward pass (2 cores with
# AMX: a full fine-tune's step 8-11% quicker, LoRA within noise) for 4.5 MB a layer (docs/training.md)
KEEP_PROBABILITIES = False

_REGISTERED = False
_ATTENTION = None  # the custom op, defined on first use (torch is imported lazily)


def _define_ops():
    """softmax(grouped @ key.T, with the scores where `allowed` is False set to the lowest value) @ value, as a
    torch custom op with its own backward; `allowed` broadcasts over (batch, kv_heads, groups, length, length),
    the scores' rows by query head.

    A custom op, not an autograd.Function, so that torch.compile calls these kernels as they are: traced, the
    Function's recomputation was merged with its forward and the partitioner kept the probabilities (141 MB at
    4 x 256 tokens), and as a checkpointed region inductor's softmax took 3.3 ms a layer against aten's 1 ms
    (its own profile, 2 cores with AMX). The probabilities are not kept (unless `keep`, KEEP_PROBABILITIES'
    A/B): the backward pass makes them again from the kept queries and keys with the same ops (so the same
    bits); they are exactly 0 where masked, so the softmax's gradient is 0 there already and no masked_fill
    backward pass is needed.
    """
    import torch

    # schemas spelled out: this module's annotations are strings (from __future__), which custom_op cannot read
    @torch.library.custom_op(
        "tuneforge::matmul_attention",
        mutates_args=(),
        schema="(Tensor grouped, Tensor key, Tensor value, Tensor? allowed, bool keep) -> (Tensor, Tensor)",
    )
    def attend(grouped, key, value, allowed, keep):
        """The output, and the probabilities if `keep` (else an empty tensor)."""
        with torch.autocast("cpu", enabled=False):  # the inputs come in the dtype the matmuls use
            probabilities = _probabilities(grouped, key, allowed)
            output = torch.matmul(probabilities, value)
        return output, probabilities if keep else probabilities.new_empty(0)

    @attend.register_fake
    def _(grouped, key, value, allowed, keep):
        scores = (*grouped.shape[:-1], key.shape[-2])
        return grouped.new_empty((*grouped.shape[:-1], value.shape[-1])), grouped.new_empty(
            scores if keep else 0
        )

    @torch.library.custom_op(
        "tuneforge::matmul_attention_backward",
        mutates_args=(),
        schema="(Tensor grad, Tensor grouped, Tensor key, Tensor value, Tensor? allowed, Tensor? probabilities)"
        " -> (Tensor, Tensor, Tensor)",
    )
    def attend_backward(grad, grouped, key, value, allowed, probabilities):
        with torch.autocast("cpu", enabled=False):
            if probabilities is None:
                probabilities = _probabilities(grouped, key, allowed)
            grad_value = torch.matmul(probabilities.transpose(-1, -2), grad)
            grad_probabilities = torch.matmul(grad, value.transpose(-1, -2))
            grad_scores = torch._softmax_backward_data(
                grad_probabilities, probabilities, -1, probabilities.dtype
            )
            del probabilities, grad_probabilities
            return (
                torch.matmul(grad_scores, key),
                torch.matmul(grad_scores.transpose(-1, -2), grouped),
                grad_value,
            )

    @attend_backward.register_fake
    def _(grad, grouped, key, value, allowed, probabilities):
        # contiguous, as matmul's
        return grouped.new_empty(grouped.shape), key.new_empty(key.shape), value.new_empty(value.shape)

    def setup_context(ctx, inputs, output):
        grouped, key, value, allowed, keep = inputs
        ctx.save_for_backward(grouped, key, value, allowed, output[1] if keep else None)

    def backward(ctx, grad, _):
        return *attend_backward(grad, *ctx.saved_tensors), None, None

    attend.register_autograd(backward, setup_context=setup_context)
    return attend


def _probabilities(grouped, key, allowed):
    """The masked softmax of the scores (a CPU softmax accumulates in fp32 for bf16 input)."""
    import torch

    scores = torch.matmul(grouped, key.transpose(-1, -2))  # (batch, kv_heads, groups x length, length)
    if allowed is not None:
        batch, kv_heads, rows, length = scores.shape
        # a bias of 0, or the lowest value (not -inf: a row with nothing to attend to gives no NaN) where masked,
        # added in one pass: masked_fill_ with the mask broadcast over the heads took twice as long (0.7 against
        # 0.35 ms a layer at 4 x 256 tokens, 2 cores with AMX)
        bias = torch.zeros(allowed.shape, dtype=scores.dtype).masked_fill_(
            ~allowed, torch.finfo(scores.dtype).min
        )
        scores.view(batch, kv_heads, rows // length, length, length).add_(bias)
    return torch.softmax(scores, dim=-1)


def _matmul_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' attention-function signature: (batch, heads, seq, dim) in, ((batch, seq, heads, dim), None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    usable = (
        query.device.type == "cpu"
        and not dropout
        and key.shape[2] == length  # no KV cache: training and scoring shapes
        and 1 < length <= MAX_SEQUENCE
        and batch * heads * length * length <= SCORE_ELEMENTS
        and heads % kv_heads == 0
        and all(kwargs.get(name) is None for name in ("softcap", "position_bias", "s_aux", "sinks"))
        and (attention_mask is None or (attention_mask.dtype == torch.bool and attention_mask.dim() == 4))
    )
    if not usable:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    # each key/value head's query heads stacked along the rows (groups x length of them): no repeated keys
    grouped = (query * scale).reshape(batch, kv_heads, groups * length, dim)
    # True where a query may attend, broadcast over the query heads of a group: a view of the model's mask, so
    # every layer keeps the one tensor (a copy repeated for each group was 24 MB over 30 layers at 4 x 256)
    allowed = None
    if attention_mask is None:
        if is_causal if is_causal is not None else getattr(module, "is_causal", True):
            allowed = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()
    else:  # sdpa_mask's format: (batch or 1, 1, length, length)
        allowed = attention_mask[:, :, None, -length:, -length:]
    # fp32 queries, keys or values (a full fine-tune's rotary output): the matmuls would cast them anyway, so
    # the cast copies are what is kept, at half the size
    output, _ = _ATTENTION(*_autocast_inputs(grouped, key, value), allowed, KEEP_PROBABILITIES)
    return output.view(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def _autocast_inputs(*tensors):
    """`tensors` in CPU autocast's dtype where it is on (what the matmuls would cast them to), else as they are."""
    import torch

    if not torch.is_autocast_enabled("cpu"):
        return tensors
    dtype = torch.get_autocast_dtype("cpu")
    return tuple(t.to(dtype) for t in tensors)


def register() -> None:
    """Make NAME an attention implementation transformers models can switch to (masks as SDPA's)."""
    global _REGISTERED, _ATTENTION
    if _REGISTERED:
        return
    _ATTENTION = _define_ops()  # defined once, before any forward pass
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, _matmul_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _REGISTERED = True


def _switchable(model) -> bool:
    config = getattr(model, "config", None)
    return (
        config is not None
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and hasattr(model, "set_attn_implementation")
        and getattr(model, "_can_set_attn_implementation", lambda: False)()
    )


@contextmanager
def matmul_attention(model):
    """Run `model`'s SDPA attention through _matmul_attention_forward inside the block (a no-op for a model
    on another implementation or one that cannot switch)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not _switchable(base):
        yield
        return
    register()
    base.set_attn_implementation(NAME)
    try:
        yield
    finally:
        base.set_attn_implementation("sdpa")
