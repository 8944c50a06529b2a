"""What kind of model object this is: wrapped by PEFT (carries adapters), quantized by bitsandbytes.

    from tuneforge.models.kind import is_peft, is_quantized
    if is_peft(model) and is_quantized(model): ...   # a QLoRA adapter on a 4/8-bit base

The one place these questions are answered, so every layer asks them the same way.
"""

from __future__ import annotations

import math

QUANTIZED_LAYERS = {"Linear4bit", "Linear8bitLt"}


def is_peft(model) -> bool:
    """Whether `model` is a PEFT model (has LoRA adapters attached, active or not)."""
    return hasattr(model, "peft_config")


def weight_shape(param) -> tuple[int, ...]:
    """A weight's real shape: bitsandbytes packs two 4-bit weights a byte, and its Params4bit keeps the shape in
    its quant_state."""
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return tuple(shape if shape is not None else param.shape)


def weight_count(param) -> int:
    """How many weights a parameter holds (a packed 4-bit one: twice its stored bytes)."""
    return math.prod(weight_shape(param))


def is_quantized(model) -> bool:
    """Whether the (base) weights are bitsandbytes 4/8-bit layers, on a plain or a PEFT-wrapped model."""
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return True
    return any(type(m).__name__ in QUANTIZED_LAYERS for m in model.modules())
