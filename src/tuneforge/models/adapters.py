"""LoRA adapters through PEFT: attach to a model, save in PEFT's own format, load onto a base.

    from tuneforge.models.adapters import attach_lora
    model = attach_lora(model, rank=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"])
    model.save_pretrained("runs/x/adapter")   # adapter_config.json + adapter_model.safetensors
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.errors import ModelError


def linear_module_names(model) -> list[str]:
    """Distinct short names of the model's Linear layers (what `target_modules` can name)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    return sorted(names)


def attach_lora(model, rank: int, alpha: float, dropout: float, target_modules: list[str], bias: str = "none",
                modules_to_save: list[str] | None = None, layers_to_transform: list[int] | None = None,
                layers_pattern: str | None = None):
    """Wrap `model` in a PeftModel whose only trainable weights are the LoRA matrices (and modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)
    known = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    wanted = (targets if isinstance(targets, list) else []) + list(modules_to_save or [])
    missing = [t for t in wanted if t not in known]
    if missing:
        raise ModelError(f"modules {missing} are not in this model; it has linear layers "
                         f"{', '.join(linear_module_names(model))} (or use all-linear); see tuneforge modules")
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias=bias,
                      modules_to_save=list(modules_to_save or []) or None,
                      layers_to_transform=layers_to_transform or None,
                      layers_pattern=layers_pattern if layers_to_transform else None, task_type="CAUSAL_LM",
                      # a tied embed_tokens/lm_head in the adapter must stay tied, or merging would untie them
                      ensure_weight_tying=bool(getattr(model.config, "tie_word_embeddings", False))
                      and bool({"embed_tokens", "lm_head", "wte"} & set(wanted)))
    try:
        return get_peft_model(model, lora)
    except ValueError as error:  # e.g. layers_to_transform naming layers the model does not have
        raise ModelError(f"cannot attach LoRA: {error}") from None


def load_adapter(model, path: str | Path, trainable: bool = False):
    """Put a saved PEFT adapter on `model` (a plain transformers model)."""
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise ModelError(f"'{path}' is not an adapter folder (no adapter_config.json); pass the folder a "
                         "training run saved as <run>/adapter")
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
