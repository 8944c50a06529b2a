"""What kind of model object this is: wrapped by PEFT (carries adapters), quantized by bitsandbytes; and whether
a model type keeps packed examples apart.

    from tuneforge.models.kind import is_peft, is_quantized, packs_exactly
    if is_peft(model) and is_quantized(model): ...   # a QLoRA adapter on a 4/8-bit base
    packs_exactly("opt")                             # False: its packed examples would attend to each other

The one place these questions are answered, so every layer asks them the same way.
"""

from __future__ import annotations

import math

QUANTIZED_LAYERS = {"Linear4bit", "Linear8bitLt"}
# Model types whose packed examples stay apart: transformers builds their attention mask block-diagonal from
# position_ids that restart at 0, and their positions come from those position_ids. Each one is probed by
# tests/unit/models/test_packing_architectures.py (a packed batch's loss equals its examples' own losses).
# Measured off by 0.0002-2% and so left out: opt, bloom and mpt (positions or ALiBi from the attention mask),
# gpt_oss (its attention sinks), jamba, falcon_h1 and lfm2 (a recurrent state flows from example to example).
PACKING_MODEL_TYPES = frozenset(
    {
        "apertus", "arcee", "bitnet", "codegen", "cohere", "cohere2", "doge", "ernie4_5", "exaone4", "falcon",
        "gemma", "gemma2", "gemma3_text", "glm", "glm4", "gpt2", "gpt_neo", "gpt_neox", "gptj", "granite",
        "granitemoe", "helium", "hunyuan_v1_dense", "llama", "mistral", "mixtral", "nemotron", "olmo2", "olmo3",
        "persimmon", "phi", "phi3", "phimoe", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "seed_oss", "smollm3",
        "stablelm", "starcoder2",
    }
)  # fmt: skip


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


def packs_exactly(model_type: str) -> bool:
    """Whether examples packed into one block train as they would alone in a model of `model_type`."""
    return model_type in PACKING_MODEL_TYPES


def is_quantized(model) -> bool:
    """Whether the (base) weights are bitsandbytes 4/8-bit layers, on a plain or a PEFT-wrapped model."""
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return True
    return any(type(m).__name__ in QUANTIZED_LAYERS for m in model.modules())
