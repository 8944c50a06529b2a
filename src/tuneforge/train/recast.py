"""Full fine-tuning under autocast without keeping a low-precision copy of every weight for the backward pass.

    with recast_linears(model):    # lean_forwards enters it for a run on one process
        batch_loss_sum(model, batch).backward()

A full fine-tune keeps fp32 weights and computes in bf16 (or fp16) under autocast. Autocast casts each weight to
bf16 once per forward pass and keeps that copy until the backward pass has used it for the input gradient: the
whole model again in bf16 (257 MB for SmolLM2-135M, 2 GB for a 1B model) on top of the fp32 weights, gradients
and AdamW moments, at the moment of the step's peak. `recast_linear` keeps only the fp32 weight (already in
memory) and the bf16 copy of the layer's input (one copy shared by q, k and v, and by gate and up, where
autocast keeps one each; an fp32 input is twice its size), and casts the weight again in the backward pass, one
layer at a time: the same matmuls in the same dtype, so the same gradients (tested), for one extra cast of each
weight a micro batch. Autocast has no such option, and torch.utils.checkpoint would recompute the whole layer,
not just the cast. `silu_mul_linear` is the down projection of a SwiGLU MLP (train/fused.py's lean_mlp calls
it): it keeps gate and up, which silu_mul keeps anyway, and makes silu(gate) * up again in the backward pass
instead of keeping it. Per micro batch of 4 x 256 tokens on SmolLM2-135M, the two keep 158 MB less.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any

from tuneforge.train.fused import forward_swapped

_RECAST_LINEAR: Any = None  # the autograd Functions, built on first use (torch is imported lazily)
_SILU_MUL_LINEAR: Any = None
# On by default. Measured A/B (benchmarks/train_throughput.py --without-recast, 2 cores of an AMD EPYC with
# AVX512-BF16, bf16 autocast, SmolLM2-135M): see docs/training.md.
RECAST = True


def _recast_linear_class():
    import torch

    class RecastLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, dtype):
            # the weight gradient needs only x's cast copy: kept instead of x (half the size of an fp32 x), and
            # shared by sibling projections (q, k, v; gate, up) of one input, where autocast keeps one each
            cast = _cast_input(x, dtype)
            ctx.save_for_backward(cast, weight, bias)
            ctx.dtype, ctx.x_dtype = dtype, x.dtype
            with torch.autocast(x.device.type, enabled=False):
                return torch.nn.functional.linear(
                    cast, weight.to(dtype), None if bias is None else bias.to(dtype)
                )

        @staticmethod
        def backward(ctx, grad):
            cast, weight, bias = ctx.saved_tensors
            grad_x, grad_weight, grad_bias = _linear_backward(
                ctx, grad, cast, weight, bias, ctx.needs_input_grad[:3]
            )
            return grad_x, grad_weight, grad_bias, None

    class SiluMulLinear(torch.autograd.Function):
        """linear(silu(gate) * up, weight, bias) in `dtype`: a SwiGLU MLP's down projection with lean_mlp's
        silu_mul before it. Keeps gate and up (which silu_mul keeps anyway), not the product: the backward pass
        makes it again with the same ops for the weight gradient."""

        @staticmethod
        def forward(ctx, gate, up, weight, bias, dtype):
            ctx.save_for_backward(gate, up, weight, bias)
            ctx.dtype = dtype
            product = torch.nn.functional.silu(gate) * up
            ctx.x_dtype = product.dtype
            with torch.autocast(gate.device.type, enabled=False):
                return torch.nn.functional.linear(
                    product.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
                )

        @staticmethod
        def backward(ctx, grad):
            from tuneforge.train.fused import silu_mul_backward

            gate, up, weight, bias = ctx.saved_tensors
            product = (torch.nn.functional.silu(gate) * up).to(ctx.dtype) if ctx.needs_input_grad[2] else None
            needs_product_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
            grad_product, grad_weight, grad_bias = _linear_backward(
                ctx, grad, product, weight, bias, (needs_product_grad, *ctx.needs_input_grad[2:4])
            )
            del product
            grad_gate = grad_up = None
            if needs_product_grad:
                grad_gate, grad_up = silu_mul_backward(grad_product, gate, up, ctx.needs_input_grad[:2])
            return grad_gate, grad_up, grad_weight, grad_bias, None

    return RecastLinear, SiluMulLinear


def _linear_backward(ctx, grad, cast, weight, bias, need):
    """The input, weight and bias gradients of linear(cast, weight.to(dtype), bias) as autograd computes them,
    each only where `need` (three bools) says so."""
    dtype = ctx.dtype
    grad = grad.to(dtype)
    grad_x = grad_weight = grad_bias = None
    if need[0]:
        grad_x = (grad @ weight.to(dtype)).to(ctx.x_dtype)
    flat = grad.reshape(-1, grad.shape[-1])
    if need[1]:
        grad_weight = (flat.T @ cast.reshape(-1, cast.shape[-1])).to(weight.dtype)
    if bias is not None and need[2]:
        grad_bias = flat.sum(0).to(bias.dtype)
    return grad_x, grad_weight, grad_bias


# The last input cast (a weak reference to the input, its version, the cast copy): sibling projections called
# with the same input share one copy. Not under torch.compile, which traces no weak references: there the casts
# are ops of the compiled graph.
_LAST_CAST: Any = None


def _cast_input(x, dtype):
    import torch

    global _LAST_CAST
    if x.dtype == dtype or torch.compiler.is_compiling():
        return x.to(dtype)
    if _LAST_CAST is not None:
        source, version, cast = _LAST_CAST
        if source() is x and x._version == version and cast.dtype == dtype:
            return cast
    cast = x.detach().to(dtype)
    _LAST_CAST = (weakref.ref(x), x._version, cast)
    return cast


def _build_function() -> None:
    # built before a forward pass runs, not inside one: torch.compile cannot trace a class definition
    global _RECAST_LINEAR, _SILU_MUL_LINEAR
    if _RECAST_LINEAR is None:
        _RECAST_LINEAR, _SILU_MUL_LINEAR = _recast_linear_class()


def recast_linear(x, weight, bias, dtype):
    """linear(x, weight, bias) computed in `dtype`, keeping x and the weight as they are for the backward pass."""
    _build_function()
    return _RECAST_LINEAR.apply(x, weight, bias, dtype)


def _cast_dtype(module, x):
    """The autocast dtype `module`'s weight is cast to for `x` in a pass that keeps tensors for the backward
    pass, or None (no autocast, nothing to cast, or no backward pass)."""
    import torch

    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    if dtype is None or module.weight.dtype == dtype or not torch.is_grad_enabled():
        return None
    return dtype


def _recast_forward(self, x):
    dtype = _cast_dtype(self, x)
    if dtype is None:
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


@contextmanager
def recast_linears(model):
    """Within the block, the trainable Linear layers of `model` keep no cast weight for the backward pass."""
    global _LAST_CAST
    _build_function()
    try:
        with forward_swapped(trainable_linears(model) if RECAST else [], _recast_forward) as count:
            yield count
    finally:
        _LAST_CAST = None


def recast_dtype(module, x):
    """The dtype `module` (a Linear) computes `x` in through recast_linear here, or None where it does not."""
    forward = vars(module).get("forward")
    if getattr(forward, "__func__", None) is not _recast_forward:
        return None
    return _cast_dtype(module, x)


def silu_mul_linear(gate, up, module, dtype):
    """module(silu(gate) * up), with `module` a Linear that recast_linears runs, computed in `dtype` and keeping
    gate and up, not their product, for the backward pass."""
    return _SILU_MUL_LINEAR.apply(gate, up, module.weight, module.bias, dtype)
