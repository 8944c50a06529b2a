"""Fixtures for the evaluation tests: LoRA adapters with random (non-zero) weights on the tiny model."""

from __future__ import annotations

import pytest


def make_adapter(model_dir, path, seed: int):
    """Save a rank-4 LoRA adapter on all linear layers whose B matrices are random, so it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def adapter_dirs(tiny_model_dir, tmp_path_factory):
    """Two different adapters for the tiny model: ('one', 'two')."""
    root = tmp_path_factory.mktemp("adapters")
    return make_adapter(tiny_model_dir, root / "one", 1), make_adapter(tiny_model_dir, root / "two", 2)
