"""LoRA dropout masks on a CPU from a quarter of the random draws torch's own dropout makes.

    with quick_dropout(model):               # the loop's step forwards enter it on a CPU
        batch_loss_sum(model, batch).backward()

torch's CPU dropout (`native_dropout`, `bernoulli_`) draws one number from the serial CPU generator for every
value, on one thread whatever the core count: 2.5 ms for a (1024 x 576) mask on this project's 2-core machine,
and an all-linear LoRA step of SmolLM2-135M draws 153 M of them, a quarter of the step (HF's recipe pays the
same). Written by hand because no library does it: `keep_mask` draws one 64-bit word for every four values
and keeps a value when its 16 bits are at or above p x 65536 — 0.75 ms for the same mask. The dropout rate is
p rounded to 1/65536 (0.05 -> 0.0500030), and values kept are scaled by 1 / (1 - that rate), so the expected
output is the input, as with torch's dropout (tests/unit/train/test_dropout.py checks the rates of each of the
four 16-bit lanes, the expectation, and that a seed gives the same masks). It is a torch custom op, opaque to
torch.compile, so a compiled run draws the same masks as an eager one; GPUs keep torch's dropout (their
generator is parallel).
"""

# no `from __future__ import annotations`: torch.library reads the op's annotations as types
import math
from typing import Any

LEVELS = 1 << 16  # a value's random draw: 16 bits of a 64-bit word
_KEEP_MASK: Any = None  # the custom op, registered on first use (torch is imported lazily)
_DRAWS: Any = None  # how many masks the op drew: a tensor it mutates
_PACK_BITS: Any = None  # boolean masks to bits and back (custom ops)
_UNPACK_BITS: Any = None


def _keep_mask_op():
    import torch

    @torch.library.custom_op(
        "tuneforge::keep_mask", mutates_args=("draws",), tags=(torch.Tag.nondeterministic_seeded,)
    )
    def keep_mask(x: torch.Tensor, p: float, draws: torch.Tensor) -> torch.Tensor:
        # `draws` counts the masks drawn. It is why compile keeps the masks apart and in eager's order: without
        # it, two masks of one input (q, k and v's) were merged into one, and a mutated tensor chains each call
        # to the one before (nondeterministic_seeded alone did neither, measured)
        draws.add_(1)
        count = x.numel()
        words = torch.empty((count + 3) // 4, dtype=torch.int64, device=x.device).random_(-(1 << 63), None)
        lanes = words.view(torch.int16)[:count].view(x.shape)  # uniform over [-32768, 32767]
        return lanes >= round(p * LEVELS) - LEVELS // 2

    @keep_mask.register_fake
    def _(x, p, draws):
        return torch.empty(x.shape, dtype=torch.bool, device=x.device)

    return keep_mask


def _bit_ops():
    import numpy
    import torch

    # numpy's packbits: 0.03 ms to pack a (1024 x 576) mask and 0.05 to unpack it on 2 cores, where the same in
    # torch ops (shifts and a sum) took 0.4 and 0.3 ms; custom ops, so torch.compile calls them as they are
    @torch.library.custom_op("tuneforge::pack_bits", mutates_args=())
    def pack_bits(mask: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(numpy.packbits(mask.contiguous().numpy().reshape(-1)))

    @pack_bits.register_fake
    def _(mask):
        return torch.empty((mask.numel() + 7) // 8, dtype=torch.uint8, device=mask.device)

    @torch.library.custom_op("tuneforge::unpack_bits", mutates_args=())
    def unpack_bits(bits: torch.Tensor, count: int) -> torch.Tensor:
        return torch.from_numpy(numpy.unpackbits(bits.numpy(), count=count).view(numpy.bool_))

    @unpack_bits.register_fake
    def _(bits, count):
        return torch.empty(count, dtype=torch.bool, device=bits.device)

    return pack_bits, unpack_bits


def build_keep_mask() -> None:
    # before a forward pass runs, not inside one: torch.compile cannot trace the op's registration
    global _KEEP_MASK, _DRAWS, _PACK_BITS, _UNPACK_BITS
    if _KEEP_MASK is None:
        import torch

        _KEEP_MASK, _DRAWS = _keep_mask_op(), torch.zeros((), dtype=torch.int64)
        _PACK_BITS, _UNPACK_BITS = _bit_ops()


def pack_mask(mask):
    """A CPU boolean mask as bits, 8 values a byte (unpack_mask gives it back): what a dropout keeps for the
    backward pass, at an eighth of a bool tensor's size."""
    build_keep_mask()
    return _PACK_BITS(mask)


def unpack_mask(bits, shape):
    """The boolean mask of `shape` that pack_mask packed into `bits`."""
    build_keep_mask()
    return _UNPACK_BITS(bits, math.prod(shape)).view(shape)


def keep_mask(x, p: float):
    """A boolean tensor shaped like `x`: True (keep) with probability keep_probability(p), drawn from the
    CPU generator (one 64-bit draw per four values)."""
    build_keep_mask()
    return _KEEP_MASK(x, p, _DRAWS)


def keep_probability(p: float) -> float:
    """The probability keep_mask keeps a value: 1 - p, with p rounded to 1/65536."""
    return 1.0 - round(p * LEVELS) / LEVELS


def quick_dropout_applies(x, p: float) -> bool:
    return p > 0 and x.device.type == "cpu"


def drop_out(x, p: float):
    """dropout(x, p) in training: values of `x` zeroed with probability p, the rest scaled to keep the mean."""
    import torch

    return torch.where(keep_mask(x, p), x, 0).mul_(1.0 / keep_probability(p))


def _quick_dropout_forward(self, x):
    if self.training and quick_dropout_applies(x, self.p):
        return drop_out(x, self.p)
    return type(self).forward(self, x)


def lora_dropouts(model) -> list:
    """The torch Dropout modules PEFT's LoRA layers in `model` apply to their input."""
    import torch

    found: list = []
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            found.extend(d for d in dropouts.values() if type(d) is torch.nn.Dropout)
    return found


def quick_dropout(model):
    """Within the block, the LoRA dropouts of `model` draw their masks with keep_mask on a CPU (elsewhere, and
    outside training, torch's dropout runs); their own forward comes back afterwards. Lean LoRA
    (train/fused.py) draws the same masks, so a run's losses do not depend on which forwards ran."""
    from tuneforge.train.fused import forward_swapped  # builds keep_mask too

    return forward_swapped(lora_dropouts(model), _quick_dropout_forward)
