"""Full fine-tuning under autocast without keeping a low-precision copy of every weight for the backward pass.

    with recast_linears(model):    # lean_forwards enters it for a run on one process
        batch_loss_sum(model, batch).backward()

A full fine-tune keeps fp32 weights and computes in bf16 (or fp16) under autocast. Autocast casts each weight to
bf16 once per forward pass and keeps that copy until the backward pass has used it for the input gradient: the
whole model again in bf16 (257 MB for SmolLM2-135M, 2 GB for a 1B model) on top of the fp32 weights, gradients
and AdamW moments, at the moment of the step's peak. `recast_linear` keeps only the fp32 weight (already in
memory) and the layer's input, and casts the weight again in the backward pass, one layer at a time: the same
matmuls in the same dtype, so the same gradients (tested), for one extra cast of each weight a micro batch.
Autocast has no such option, and torch.utils.checkpoint would recompute the whole layer, not just the cast.
"""

from __future__ import annotations

from typing import Any

from tuneforge.train.fused import forward_swapped

_RECAST_LINEAR: Any = None  # the autograd Function, built on first use (torch is imported lazily)
# On by default. Measured A/B (benchmarks/train_throughput.py --without-recast, 2 cores of an AMD EPYC with
# AVX512-BF16, bf16 autocast, SmolLM2-135M): see docs/training.md.
RECAST = True


def _recast_linear_class():
    import torch

    class RecastLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, dtype):
            # x is kept as given: sibling projections (q, k, v; gate, up) share the one tensor, where autocast
            # keeps a cast copy of it for each
            ctx.save_for_backward(x, weight, bias)
            ctx.dtype = dtype
            with torch.autocast(x.device.type, enabled=False):
                return torch.nn.functional.linear(
                    x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
                )

        @staticmethod
        def backward(ctx, grad):
            x, weight, bias = ctx.saved_tensors
            dtype = ctx.dtype
            grad = grad.to(dtype)
            grad_x = grad_weight = grad_bias = None
            if ctx.needs_input_grad[0]:
                grad_x = (grad @ weight.to(dtype)).to(x.dtype)
            flat = grad.reshape(-1, grad.shape[-1])
            if ctx.needs_input_grad[1]:
                grad_weight = (flat.T @ x.to(dtype).reshape(-1, x.shape[-1])).to(weight.dtype)
            if bias is not None and ctx.needs_input_grad[2]:
                grad_bias = flat.sum(0).to(bias.dtype)
            return grad_x, grad_weight, grad_bias, None

    return RecastLinear


def _build_function() -> None:
    # built before a forward pass runs, not inside one: torch.compile cannot trace a class definition
    global _RECAST_LINEAR
    if _RECAST_LINEAR is None:
        _RECAST_LINEAR = _recast_linear_class()


def recast_linear(x, weight, bias, dtype):
    """linear(x, weight, bias) computed in `dtype`, keeping x and the weight as they are for the backward pass."""
    _build_function()
    return _RECAST_LINEAR.apply(x, weight, bias, dtype)


def _recast_forward(self, x):
    import torch

    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    if dtype is None or self.weight.dtype == dtype or not torch.is_grad_enabled():
        return type(self).forward(self, x)  # nothing would be cast, or nothing kept for a backward pass
    return recast_linear(x, self.weight, self.bias, dtype)


def trainable_linears(model) -> list:
    """The plain torch Linear layers of `model` whose weight trains: a full fine-tune's, or a LoRA run's
    modules_to_save; not LoRA's own A and B matrices (small: lean LoRA, train/fused.py, runs those)."""
    import torch

    return [
        module
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and module.weight.requires_grad and ".lora_" not in f".{name}"
    ]


def recast_linears(model):
    """Within the block, the trainable Linear layers of `model` keep no cast weight for the backward pass."""
    _build_function()
    return forward_swapped(trainable_linears(model) if RECAST else [], _recast_forward)
