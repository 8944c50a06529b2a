"""The training speed and memory levers: memory-lean forwards swapped in for training only, and torch.compile.

    with lean_mlp(model), lean_lora(model):   # same results, fewer activations kept for the backward pass
        batch_loss_sum(model, batch).backward()
    compile_decoder_layers(model)             # config key compile: true

A SwiGLU MLP computes down(silu(gate(x)) * up(x)). Plain autograd keeps gate(x), silu(gate(x)) and up(x) for
the backward pass: three (tokens x intermediate) tensors a layer, the largest share of a LoRA run's activations.
`silu_mul` keeps gate(x) and up(x) and recomputes silu in the backward pass (two elementwise passes): measured
on SmolLM2-135M it keeps ~180 MB fewer activations per 1k tokens, with the speed difference inside this
machine's run-to-run noise (about ±5%). It is the CPU/any-device counterpart of Liger's fused SwiGLU kernel
(Triton, GPU-only), and computes exactly the same result.

A PEFT LoRA layer computes base(x) + B(A(dropout(x))) * scaling, and A's matmul keeps its own dropped-out copy
of x: with all-linear LoRA that is 7 copies of a layer's inputs (q, k and v each copy the same one), plus, under
bf16 autocast, a cast copy of each. `dropout_linear` fuses dropout into A's matmul and keeps x itself — one
tensor shared by the sibling projections — and the dropout mask as 1 byte a value (on a CPU 1 bit, packed by
numpy: 134 MB less a micro batch of 4 x 256 tokens with all-linear LoRA on SmolLM2-135M), recomputing x * mask
in the backward pass. It draws the same mask as PEFT's dropout module (`native_dropout` on a GPU; on a CPU
train/dropout.py's quicker masks, which the loop's quick_dropout gives PEFT's dropout too), so the results are
the same. PEFT has no such option (its forward is per module and cannot see its siblings). A bf16 input is
dropped out in bf16, where PEFT casts it to the fp32 adapter and back: the same bits, without the casts.
"""

from __future__ import annotations

import types
from contextlib import ExitStack, contextmanager
from typing import Any, cast

_SILU_MUL: Any = None  # autograd Functions, built on first use (torch is imported lazily)
_DROPOUT_LINEAR: Any = None


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
            return silu_mul_backward(grad, gate, up, ctx.needs_input_grad)

    return SiluMul


def silu_mul_backward(grad, gate, up, needs: tuple) -> tuple:
    """The gradients of silu(gate) * up with respect to gate and up (each only where `needs` says so)."""
    import torch

    grad_up = grad * torch.nn.functional.silu(gate) if needs[1] else None
    # aten's fused SiLU derivative: one pass instead of five elementwise ops
    grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if needs[0] else None
    return grad_gate, grad_up


def _build_functions() -> None:
    # built before a forward pass runs, not inside one: torch.compile cannot trace a class definition
    from tuneforge.train.dropout import build_keep_mask

    build_keep_mask()
    global _SILU_MUL, _DROPOUT_LINEAR
    if _SILU_MUL is None:
        _SILU_MUL, _DROPOUT_LINEAR = _silu_mul_class(), _dropout_linear_class()


def silu_mul(gate, up):
    """silu(gate) * up, keeping only `gate` and `up` for the backward pass."""
    _build_functions()
    return _SILU_MUL.apply(gate, up)


def _dropout_linear_class():
    import torch

    from tuneforge.train.dropout import (
        keep_mask,
        keep_probability,
        pack_mask,
        quick_dropout_applies,
        unpack_mask,
    )

    class DropoutLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, p, dtype):
            # as PEFT: x cast to the adapter's dtype, dropout, then the matmul in autocast's dtype if it is on;
            # the casts and the dropped-out copy are temporaries here, not kept. Where x already has the compute
            # dtype, dropout runs in it: where() is exact and x * scale is rounded once either way (the same
            # bits as PEFT's detour through fp32, tested), without two casts
            ctx.dtype = dtype if x.dtype == dtype else weight.dtype
            if quick_dropout_applies(x, p):  # a CPU: train/dropout.py's masks, as PEFT's under quick_dropout
                mask, ctx.scale = keep_mask(x, p), 1.0 / keep_probability(p)
                # where(), not x * mask: a bool mask multiplied is first copied to x's dtype
                dropped = torch.where(mask, x.to(ctx.dtype), 0).mul_(ctx.scale)
            elif p > 0:  # a GPU: torch's dropout, as PEFT's (its generator is parallel there)
                ctx.dtype = weight.dtype
                dropped, mask = torch.native_dropout(x.to(weight.dtype), p, True)
                ctx.scale = 1.0 / (1.0 - p)
            else:
                dropped, mask, ctx.scale = x.to(ctx.dtype), None, 1.0
            ctx.compute_dtype = dtype
            ctx.mask_shape = None
            output = torch.nn.functional.linear(dropped.to(dtype), weight.to(dtype))
            if mask is not None and mask.device.type == "cpu":  # kept as bits: 1/8 of the bool tensor
                ctx.mask_shape, mask = mask.shape, pack_mask(mask)
            ctx.save_for_backward(x, mask, weight)
            return output

        @staticmethod
        def backward(ctx, grad):
            x, mask, weight = ctx.saved_tensors
            if ctx.mask_shape is not None:
                mask = unpack_mask(mask, ctx.mask_shape)
            dtype, scale = ctx.compute_dtype, ctx.scale
            grad = grad.to(dtype)
            grad_x = grad_weight = None
            if ctx.needs_input_grad[0]:
                grad_x = grad @ weight.to(dtype)
                if mask is not None:
                    grad_x = torch.where(mask, grad_x, 0).mul_(scale)  # native_dropout_backward's values
                grad_x = grad_x.to(x.dtype)
            if ctx.needs_input_grad[1]:
                # exactly as the forward pass computed it
                dropped = x.to(ctx.dtype)
                if mask is not None:
                    dropped = torch.where(mask, dropped, 0).mul_(scale)
                dropped = dropped.to(dtype)
                grad_weight = grad.reshape(-1, grad.shape[-1]).T @ dropped.reshape(-1, dropped.shape[-1])
                grad_weight = grad_weight.to(weight.dtype)
            return grad_x, grad_weight, None, None

    return DropoutLinear


def dropout_linear(x, weight, p: float, dtype):
    """linear(dropout(x, p), weight) computed in `dtype`, keeping x and a boolean mask for the backward pass."""
    _build_functions()
    return _DROPOUT_LINEAR.apply(x, weight, p, dtype)


def _lean_forward(self, x):
    from tuneforge.train.recast import recast_dtype, silu_mul_linear

    gate, up = self.gate_proj(x), self.up_proj(x)
    dtype = recast_dtype(self.down_proj, gate)
    if dtype is not None:  # a full fine-tune's down projection: its input is made again in the backward pass
        return silu_mul_linear(gate, up, self.down_proj, dtype)
    return self.down_proj(silu_mul(gate, up))


def swiglu_mlps(model) -> list:
    """The model's MLP blocks of the form down(silu(gate(x)) * up(x)) (llama, mistral, qwen2/3, olmo, ...)."""
    import torch

    found = []
    for module in model.modules():
        if not type(module).__name__.endswith("MLP") or not all(
            hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")
        ):
            continue
        if isinstance(module.act_fn, torch.nn.SiLU) or type(module.act_fn).__name__ == "SiLUActivation":
            found.append(module)
    return found


@contextmanager
def forward_swapped(modules: list, forward):
    """Within the block, each of `modules` runs `forward`; the class's own forward comes back afterwards."""
    _build_functions()
    for module in modules:
        module.forward = types.MethodType(forward, module)
    try:
        yield len(modules)
    finally:
        for module in modules:  # a model's own kernelize (transformers 5) may have dropped it already
            vars(module).pop("forward", None)


def lean_mlp(model):
    """Within the block, SwiGLU MLPs of `model` use silu_mul; their own forward comes back afterwards."""
    return forward_swapped(swiglu_mlps(model), _lean_forward)


def _plain_lora_adapter(layer) -> str | None:
    """The one active vanilla LoRA adapter of a PEFT layer in an unmerged, enabled state, else None."""
    import torch

    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    adapter = layer.active_adapters[0]
    if adapter not in layer.lora_A or adapter in getattr(layer, "lora_variant", {}):  # DoRA etc. keep PEFT's
        return None
    lora_a, dropout = layer.lora_A[adapter], layer.lora_dropout[adapter]
    if type(lora_a) is not torch.nn.Linear or lora_a.bias is not None:
        return None
    if not isinstance(dropout, (torch.nn.Dropout, torch.nn.Identity)):
        return None
    return adapter


def _lean_lora_forward(self, x, *args, **kwargs):
    adapter = None if args or kwargs else _plain_lora_adapter(self)
    if adapter is None:
        return type(self).forward(self, x, *args, **kwargs)
    return _plus_lora_update(self, adapter, x, self.base_layer(x))


def _plus_lora_update(self, adapter: str, x, result):
    """result + B(A(dropout(x))) * scaling of a PEFT LoRA layer, computed as PEFT does, in its dtypes."""
    import torch

    lora_a, lora_b, dropout = self.lora_A[adapter], self.lora_B[adapter], self.lora_dropout[adapter]
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else lora_a.weight.dtype
    p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    update = lora_b(dropout_linear(x, lora_a.weight, p, dtype)) * self.scaling[adapter]
    return (result + update).to(result.dtype)


def lora_linear_layers(model) -> list:
    """PEFT's LoRA layers over linear (incl. bitsandbytes-quantized) layers in `model`."""
    return [
        module
        for module in model.modules()
        if type(module).__module__.startswith("peft.tuners.lora")
        and type(module).__name__ in ("Linear", "Linear8bitLt", "Linear4bit")
        and hasattr(module, "lora_A")
    ]


def lean_lora(model):
    """Within the block, PEFT LoRA linear layers of `model` use dropout_linear; PEFT's forward comes back after."""
    return forward_swapped(lora_linear_layers(model), _lean_lora_forward)


@contextmanager
def lean_forwards(model, lora: bool = True, fused: bool | None = None, attention: bool = False):
    """lean_mlp and, with `lora`, lean_lora, recast_linears and lean_norms together: the block a training run's
    steps run in.

    With `lora` and `fused` (default FUSED_PROJECTIONS), the frozen q/k/v and gate/up projections also run as
    one matmul each (fused_projections); with `lora` false (sharded weights) they stay separate. With
    `attention` (a CPU run), short sequences' attention runs as matmuls (train/attention.py).
    """
    from tuneforge.train.attention import matmul_attention
    from tuneforge.train.norms import lean_norms
    from tuneforge.train.recast import recast_linears

    with ExitStack() as stack:
        stack.enter_context(lean_mlp(model))
        if lora:
            stack.enter_context(lean_lora(model))
            stack.enter_context(recast_linears(model))  # a full fine-tune's layers
            stack.enter_context(lean_norms(model))
            if FUSED_PROJECTIONS if fused is None else fused:
                stack.enter_context(fused_projections(model))
        if attention:
            stack.enter_context(matmul_attention(model))
        yield


# Off by default: on 2 CPU cores without AMX (SmolLM2-135M, LoRA, seq 256 x 4) the fused step measured no
# faster than the separate one (see the module docstring); exact either way.
FUSED_PROJECTIONS = False
PROJECTION_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _ProjectionGroup:
    """Sibling projections of one frozen input, their weights made row slices of one concatenated matrix.

    The first sibling called with an input computes all of them in one matmul and leaves the others'
    outputs here; each sibling takes its own (a sibling called with another input computes it alone).
    """

    def __init__(self, members: list, bases: list):
        import torch

        self.members, self.bases = members, bases
        self.sizes = [base.out_features for base in bases]
        # Any: both are None after release()
        self.weight: Any = torch.cat([base.weight.detach() for base in bases])
        self.bias: Any = (
            torch.cat([base.bias.detach() for base in bases]) if bases[0].bias is not None else None
        )
        start = 0
        for base, size in zip(
            bases, self.sizes, strict=True
        ):  # the same memory, no second copy of the weights
            base.weight.data = self.weight[start : start + size]
            if self.bias is not None:
                base.bias.data = self.bias[start : start + size]
            start += size
        self.pointers = [base.weight.data_ptr() for base in bases]
        self.input: Any = None
        self.outputs: list = []

    def intact(self) -> bool:
        """Weights still the slices (nothing reassigned them, e.g. a safe merge), every LoRA sibling plain."""
        return all(
            base.weight.data_ptr() == pointer for base, pointer in zip(self.bases, self.pointers, strict=True)
        ) and all(
            member is base or _plain_lora_adapter(member) is not None
            for member, base in zip(self.members, self.bases, strict=True)
        )

    def take(self, index: int, x):
        """The base projection `index` of x, from the one matmul over all siblings."""
        import torch

        if self.input is not x or self.outputs[index] is None:
            fused = torch.nn.functional.linear(x, self.weight, self.bias)  # (..., sum of out_features)
            self.input, self.outputs = x, list(fused.split(self.sizes, dim=-1))  # split: backward is one cat
        output, self.outputs[index] = self.outputs[index], None
        if all(o is None for o in self.outputs):
            self.input = None  # every sibling served: keep nothing alive
        return output

    def release(self) -> None:
        """Give each base its own memory again (saving code refuses weights that share a storage)."""
        for base in self.bases:
            base.weight.data = base.weight.data.clone()
            if base.bias is not None:
                base.bias.data = base.bias.data.clone()
        self.weight = self.bias = self.input = None
        self.outputs = []


def projection_groups(model) -> list[tuple[list, list]]:
    """(members, frozen base linears) of each fusable q/k/v and gate/up set in `model` (non-quantized bases)."""
    lora_layers = {id(layer) for layer in lora_linear_layers(model)}
    groups = []
    for module in model.modules():
        for names in PROJECTION_GROUPS:
            members: list = [getattr(module, name, None) for name in names]
            if any(member is None for member in members):
                continue
            bases: list = [member.base_layer if id(member) in lora_layers else member for member in members]
            bases = [base if _is_frozen_linear(base) else None for base in bases]
            if any(base is None for base in bases):
                continue
            first = bases[0].weight
            if all(
                base.in_features == bases[0].in_features
                and base.weight.dtype == first.dtype
                and base.weight.device == first.device
                and (base.bias is None) == (bases[0].bias is None)
                for base in bases
            ):
                groups.append((members, bases))
    return groups


def _is_frozen_linear(layer) -> bool:
    import torch

    return (
        type(layer) is torch.nn.Linear
        and not layer.weight.requires_grad
        and (layer.bias is None or not layer.bias.requires_grad)
    )


def _fused_member_forward(self, x, *args, group: _ProjectionGroup, index: int, previous, **kwargs):
    import torch

    if args or kwargs or torch.compiler.is_compiling() or not group.intact():
        return previous(
            x, *args, **kwargs
        )  # the forward this one replaced (lean LoRA's, PEFT's or nn.Linear's)
    result = group.take(index, x)
    if self is group.bases[index]:
        return result
    # group.intact() above: every LoRA sibling has a plain adapter, so this is not None
    return _plus_lora_update(self, cast(str, _plain_lora_adapter(self)), x, result)


@contextmanager
def fused_projections(model):
    """Within the block, each frozen q/k/v and gate/up set of `model` runs as one matmul over concatenated
    weights (LoRA updates added as before); separate weights and forwards come back afterwards."""
    import functools

    _build_functions()
    groups, swapped = [], []
    try:
        for members, bases in projection_groups(model):
            group = _ProjectionGroup(members, bases)
            groups.append(group)
            for index, member in enumerate(members):
                previous_own = vars(member).get("forward")
                member.forward = functools.partial(
                    _fused_member_forward,
                    member,
                    group=group,
                    index=index,
                    previous=previous_own or member.forward,
                )
                swapped.append((member, previous_own))
        yield len(groups)
    finally:
        for member, previous_own in reversed(swapped):
            if previous_own is None:
                del member.forward
            else:
                member.forward = previous_own
        for group in groups:
            group.release()


def compile_decoder_layers(model) -> int:
    """torch.compile each transformer block in place; returns how many were compiled.

    Per block rather than the whole model (as torchtune does): the blocks share one compiled graph, so
    compilation takes about as long as for a single block, and the chunked loss head stays eager.
    """
    blocks = _decoder_blocks(model)
    for block in blocks:
        block.compile()
    return len(blocks)


def uncompile_decoder_layers(model) -> int:
    """Undo compile_decoder_layers: each block runs its eager forward again (Module.compile keeps the compiled
    callable beside the module, so dropping it is the whole undo); returns how many blocks it undid."""
    blocks = [block for block in _decoder_blocks(model) if block._compiled_call_impl is not None]
    for block in blocks:
        block._compiled_call_impl = None
    return len(blocks)


def _decoder_blocks(model) -> Any:
    import torch

    from tuneforge.train.loss import _causal_lm

    decoder = _causal_lm(model).base_model
    return max((m for m in decoder.modules() if isinstance(m, torch.nn.ModuleList)), key=len, default=[])
