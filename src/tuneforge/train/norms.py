"""RMSNorm that keeps its input and 1/rms for the backward pass, recomputing the normalised copy there.

    with lean_norms(model):        # lean_forwards enters it for a run on one process
        batch_loss_sum(model, batch).backward()

Llama's RMSNorm (and the 140-odd transformers families whose forward is the same code) computes
`weight * (x.float() * rsqrt(mean(x.float()**2) + eps)).to(x.dtype)`, and plain autograd keeps the fp32 copy of x
and, when the weight trains, the fp32 normalised copy too: in a full fine-tune two fp32 tensors where x itself
would do, in a LoRA run on a bf16 base an fp32 copy of a bf16 input. `rms_norm` keeps x as given and the one
fp32 value per token, 1/rms, and recomputes the normalised copy in the backward pass (one elementwise pass). The
backward pass is autograd's own derivative formulas, op for op in the same order and dtypes, so the losses and
gradients are the same bits (tested). On SmolLM2-135M (576 wide) that is 4.6 KB per token per layer fewer in a
full fine-tune, 2.3 KB in a LoRA run. torch's own `rms_norm` keeps the normalised copy too, and Liger's RMSNorm
is a Triton kernel (GPU only) that rounds differently.
"""

from __future__ import annotations

from typing import Any

from tuneforge.train.fused import forward_swapped

_RMS_NORM: Any = None  # the autograd Functions, built on first use (torch is imported lazily)
_SCALED_NORM: Any = None
LEAN_NORMS = True  # off: the benchmark's --without-lean-norms A/B


def _rms_norm_classes():
    import torch

    def weight_gradient(grad, normed, weight):  # mul: d(weight * normed)/d weight, summed to its shape
        return (grad * normed).sum_to_size(weight.shape).to(weight.dtype)

    class RMSNorm(torch.autograd.Function):
        """The whole norm, for a low-precision x: keeps x and 1/rms."""

        @staticmethod
        def forward(ctx, x, weight, eps):
            # LlamaRMSNorm.forward, line for line
            wide = x.to(torch.float32)
            variance = wide.pow(2).mean(-1, keepdim=True)
            rstd = torch.rsqrt(variance + eps)
            normed = (wide * rstd).to(x.dtype)
            ctx.save_for_backward(x, weight, rstd)
            return weight * normed

        @staticmethod
        def backward(ctx, grad):
            # autograd's formulas for each forward op, last op first (torch/csrc/autograd/FunctionsManual.cpp);
            # the engine sums a broadcast input's gradient to its shape and casts it to the input's dtype
            x, weight, rstd = ctx.saved_tensors
            wide = x.to(torch.float32)
            normed = (wide * rstd).to(x.dtype)
            grad_weight = weight_gradient(grad, normed, weight) if ctx.needs_input_grad[1] else None
            if not ctx.needs_input_grad[0]:
                return None, grad_weight, None
            grad_normed = (grad * weight).sum_to_size(normed.shape).to(normed.dtype)
            grad_wide = grad_normed.to(torch.float32)  # the .to(x.dtype) cast's gradient
            grad_rstd = (grad_wide * wide).sum_to_size(rstd.shape)  # mul: d(wide * rstd)/d rstd
            grad_variance = -0.5 * grad_rstd * rstd.pow(3)  # rsqrt
            grad_squares = grad_variance.expand(wide.shape) / wide.shape[-1]  # mean over the last dim
            grad_from_squares = grad_squares * (2.0 * wide)  # pow(2): grad * (2 * wide**1)
            # wide's two gradients, summed (as autograd does, before the cast back: x's other users add theirs
            # to the cast's result)
            grad_x = (grad_wide * rstd + grad_from_squares).to(x.dtype)
            return grad_x, grad_weight, None

    class ScaledNorm(torch.autograd.Function):
        """weight * (x * rstd), for an fp32 x: autograd keeps x and 1/rms for the rest of the norm anyway."""

        @staticmethod
        def forward(ctx, x, rstd, weight):
            ctx.save_for_backward(x, rstd, weight)
            return weight * (x * rstd)

        @staticmethod
        def backward(ctx, grad):
            x, rstd, weight = ctx.saved_tensors
            normed = x * rstd
            grad_weight = weight_gradient(grad, normed, weight) if ctx.needs_input_grad[2] else None
            grad_normed = (grad * weight).sum_to_size(normed.shape).to(normed.dtype)
            # returned to autograd separately, so x's gradients (this, pow's and the residual's) add up in its
            # order: a sum of three rounds differently in another order
            grad_x = grad_normed * rstd if ctx.needs_input_grad[0] else None
            grad_rstd = (grad_normed * x).sum_to_size(rstd.shape) if ctx.needs_input_grad[1] else None
            return grad_x, grad_rstd, grad_weight

    return RMSNorm, ScaledNorm


def _build_function() -> None:
    # built before a forward pass runs, not inside one: torch.compile cannot trace a class definition
    global _RMS_NORM, _SCALED_NORM
    if _RMS_NORM is None:
        _RMS_NORM, _SCALED_NORM = _rms_norm_classes()


def rms_norm(x, weight, eps: float):
    """LlamaRMSNorm's result, keeping x and 1/rms (not their fp32 copies) for the backward pass."""
    import torch

    _build_function()
    if x.dtype != torch.float32:
        return _RMS_NORM.apply(x, weight, eps)
    # LlamaRMSNorm.forward's first lines as autograd ops: their backward needs only x and 1/rms
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return _SCALED_NORM.apply(x, rstd, weight)


def _lean_forward(self, hidden_states):
    import torch

    if not torch.is_grad_enabled():
        return type(self).forward(self, hidden_states)
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _same_code(one, other) -> bool:
    return (one.co_code, one.co_consts, one.co_names) == (other.co_code, other.co_consts, other.co_names)


def llama_rms_norms(model) -> list:
    """The norms of `model` whose forward is LlamaRMSNorm's very code (llama, mistral, qwen2/3, granite, ...),
    checked by its bytecode: Gemma's (1 + weight), Olmo2's order of cast and scale and the like are left alone."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    reference = LlamaRMSNorm.forward.__code__
    found = []
    for module in model.modules():
        code = getattr(getattr(type(module), "forward", None), "__code__", None)
        # a forward of the module's own (a hub kernel, another lever) is not the class's
        if code is not None and "forward" not in vars(module) and _same_code(code, reference):
            found.append(module)
    return found


def lean_norms(model):
    """Within the block, Llama-style RMSNorms of `model` keep x and 1/rms; their own forward comes back after."""
    _build_function()
    return forward_swapped(llama_rms_norms(model) if LEAN_NORMS else [], _lean_forward)
