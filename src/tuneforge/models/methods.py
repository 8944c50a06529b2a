"""Prepare a loaded model for a training method; the training loop itself is the same for every method.

    model = prepare_for_training(model, config)   # lora: PEFT-wrapped, only adapters trainable
"""

from __future__ import annotations

from tuneforge.errors import ConfigError
from tuneforge.models.adapters import attach_lora


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def prepare_for_training(model, config):
    """Return the model with exactly the weights the method trains set to require grad."""
    import torch

    if config.method == "lora":
        if is_peft(model):  # continue training the adapter already attached (e.g. a second llm.train call)
            current = model.peft_config["default"].r
            if current != config.rank:
                raise ConfigError(f"the loaded adapter has rank {current} but rank {config.rank} was asked for; "
                                  f"a LoRA's rank cannot change: use rank: {current} or start from the base")
            for name, param in model.named_parameters():
                param.requires_grad_("lora_" in name)
            return model
        model.requires_grad_(False)
        return attach_lora(model, config.rank, config.alpha, config.lora_dropout, config.target_modules)
    if config.method == "full":
        if is_peft(model):
            model = model.merge_and_unload()
        # full fine-tuning keeps fp32 master weights; bf16/fp16 run as autocast compute only
        model.to(torch.float32)
        model.requires_grad_(True)
        return model
    raise ConfigError(f"method '{config.method}' is not supported")


def required_weight_dtype(config, precision: str) -> str:
    """The weight dtype a method trains in: LoRA keeps the frozen base in the compute precision."""
    return precision if config.method == "lora" else "fp32"
