"""Quantize a base model with bitsandbytes for QLoRA: 4-bit (nf4/fp4, double quantization) or 8-bit.

    from tuneforge.models.quantization import bnb_config
    model, tokenizer, _ = load_model("default", quantization=bnb_config(bits=4, compute_precision="fp32"))

QLoRA is LoRA on a quantized frozen base (one flag, as torchtune puts it), so the training loop is the same.
bitsandbytes runs on CUDA and, from 0.45, on CPU too — there much slower than bf16/fp32 LoRA (its fast CPU
kernels come from a hub download we never make), so on a CPU QLoRA is for models that do not fit otherwise.
"""

from __future__ import annotations

import os

from tuneforge.errors import ConfigError


def bnb_config(
    bits: int, quant_type: str = "nf4", double_quant: bool = True, compute_precision: str = "fp32"
):
    """A transformers BitsAndBytesConfig for `bits` (4 or 8)."""
    try:
        import bitsandbytes  # noqa: F401  (fail here with an install hint, not deep inside transformers)
    except ImportError:
        raise ConfigError("method qlora needs bitsandbytes: pip install 'tuneforge[quant]'") from None
    from transformers import BitsAndBytesConfig

    from tuneforge.hardware import torch_dtype

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits == 4:
        # FSDP shards a module's parameters only if they share one dtype: under an FSDP launch the packed 4-bit
        # weights are stored in the compute dtype's bytes (bnb's quant_storage) instead of uint8
        fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
        storage = {"bnb_4bit_quant_storage": torch_dtype(compute_precision)} if fsdp else {}
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=torch_dtype(compute_precision),
            **storage,
        )
    raise ConfigError(f"bits must be 4 or 8 for qlora; got {bits} (use method: lora for 16-bit)")
