"""Memory-lean replacements for parts of a model's forward pass, swapped in for training only.

    with lean_mlp(model):     # llama-family MLPs keep 2 of their 3 big activations for the backward pass
        batch_loss_sum(model, batch).backward()

A SwiGLU MLP computes down(silu(gate(x)) * up(x)). Plain autograd keeps gate(x), silu(gate(x)) and up(x) for
the backward pass: three (tokens x intermediate) tensors a layer, the largest share of a LoRA run's activations.
`silu_mul` keeps gate(x) and up(x) and recomputes silu in the backward pass (two elementwise passes): measured
on SmolLM2-135M it keeps ~180 MB fewer activations per 1k tokens, with the speed difference inside this
machine's run-to-run noise (about ±5%). It is the CPU/any-device counterpart of Liger's fused SwiGLU kernel
(Triton, GPU-only), and computes exactly the same result.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

_SILU_MUL = None


def _silu_mul_class():
    import torch

    class SiluMul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, gate, up):
            ctx.save_for_backward(gate, up)
            return torch.nn.functional.silu(gate) * up

        @staticmethod
        def backward(ctx, grad):
            gate, up = ctx.saved_tensors
            grad_up = grad * torch.nn.functional.silu(gate) if ctx.needs_input_grad[1] else None
            # aten's fused SiLU derivative: one pass instead of five elementwise ops
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
            return grad_gate, grad_up

    return SiluMul


def silu_mul(gate, up):
    """silu(gate) * up, keeping only `gate` and `up` for the backward pass."""
    global _SILU_MUL
    if _SILU_MUL is None:
        _SILU_MUL = _silu_mul_class()
    return _SILU_MUL.apply(gate, up)


def _lean_forward(self, x):
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def swiglu_mlps(model) -> list:
    """The model's MLP blocks of the form down(silu(gate(x)) * up(x)) (llama, mistral, qwen2/3, olmo, ...)."""
    import torch

    found = []
    for module in model.modules():
        if not type(module).__name__.endswith("MLP") or not all(
                hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            continue
        if isinstance(module.act_fn, torch.nn.SiLU) or type(module.act_fn).__name__ == "SiLUActivation":
            found.append(module)
    return found


@contextmanager
def lean_mlp(model):
    """Within the block, SwiGLU MLPs of `model` use silu_mul; their own forward comes back afterwards."""
    patched = swiglu_mlps(model)
    for module in patched:
        module.forward = types.MethodType(_lean_forward, module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward  # the class's forward again
