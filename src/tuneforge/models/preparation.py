"""Ready the base for a training method: the one step a run calls before the loop.

    from tuneforge.models.preparation import prepare_base
    model = prepare_base(model, tokenizer, config, device="cpu", precision="fp32", source=source)
    # qlora: reloaded 4/8-bit + LoRA; lora: base in the compute dtype + LoRA; full: fp32, all trainable;
    # scratch: a new model sized by n_layer/n_head/n_embd/n_positions

It reloads or casts the base as the method needs, builds a scratch model, then `prepare_for_training`
(models/methods.py) marks exactly the weights the method trains.
"""

from __future__ import annotations

from tuneforge.errors import ConfigError, ModelError
from tuneforge.hardware import torch_dtype
from tuneforge.models.kind import is_peft, is_quantized
from tuneforge.models.loading import ModelSource, load_model
from tuneforge.models.methods import prepare_for_training, required_weight_dtype
from tuneforge.models.quantization import bnb_config
from tuneforge.models.scratch import build_scratch_model


def prepare_base(
    model,
    tokenizer,
    config,
    *,
    device: str,
    precision: str,
    source: ModelSource | None = None,
    trust_remote_code: bool = False,
):
    """The model `config.method` trains, ready to train; `model` may be returned as it is, changed or replaced.

    qlora reloads the base quantized (bits, quant_type, double_quant) unless it already is; lora and full
    bring the weights to the dtype the method trains in (`required_weight_dtype`), reloading from `source`
    (default: `config.model`) or, with an adapter attached, casting in place; scratch builds a new model for
    `tokenizer`. New weights (the scratch model, LoRA's matrices) are drawn after seeding with `config.seed`.
    """
    from transformers import set_seed

    reload_from = source.path if source is not None else config.model
    if config.method == "qlora":
        model = quantized_base(model, config, device, precision, reload_from, trust_remote_code)
    elif config.method != "scratch":
        model = base_in_dtype(
            model, required_weight_dtype(config, precision), device, reload_from, trust_remote_code
        )
    set_seed(config.seed)  # after any reload, so the new weights do not depend on what loading drew
    if config.method == "scratch":
        model = build_scratch_model(
            config.architecture,
            tokenizer,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_embd=config.n_embd,
            n_positions=config.n_positions,
            seed=config.seed,
        ).to(device)
    return prepare_for_training(model, config)


def quantized_base(
    model, config, device: str, precision: str, reload_from: str, trust_remote_code: bool = False
):
    """QLoRA's base: `model` if it is already 4/8-bit, else the base reloaded quantized by bitsandbytes."""
    if is_quantized(model):
        return model
    if is_peft(model):
        raise ConfigError(
            "method qlora trains a new adapter on a quantized base; unload the current adapter "
            "first (llm.unload_adapter()) or use method: lora to keep training it"
        )
    quantization = bnb_config(config.bits, config.quant_type, config.double_quant, precision)
    return _reload(reload_from, device, precision, trust_remote_code, quantization)


def base_in_dtype(model, precision: str, device: str, reload_from: str, trust_remote_code: bool = False):
    """`model` with its base weights in `precision` (full fine-tuning: fp32), reloaded from disk if need be.

    An attached adapter keeps training where it is: its base is cast in place (a 4/8-bit base stays as it is)
    and the LoRA weights stay fp32 master weights.
    """
    import torch

    dtype = torch_dtype(precision)
    if is_peft(model):
        if not is_quantized(model):
            for name, param in model.named_parameters():
                param.data = param.data.to(torch.float32 if "lora_" in name else dtype)
        return model
    if next(model.parameters()).dtype == dtype and not is_quantized(model):
        return model
    return _reload(reload_from, device, precision, trust_remote_code)


def _reload(reload_from: str | None, device: str, precision: str, trust_remote_code: bool, quantization=None):
    if not reload_from:
        raise ModelError(
            "the base must be reloaded for this method but its source is unknown; set model: "
            "(a folder, .gguf file or hub id) in the run config"
        )
    model, _, _ = load_model(
        reload_from,
        device=device,
        precision=precision,
        trust_remote_code=trust_remote_code,
        quantization=quantization,
    )
    return model
