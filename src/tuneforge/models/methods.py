"""Which weights each training method trains; the training loop itself is the same for every method.

    from tuneforge.models.methods import prepare_for_training
    model = prepare_for_training(model, config)   # lora: PEFT-wrapped, only adapters trainable

A run calls `tuneforge.models.preparation.prepare_base`, which readies the base (reload, cast, scratch)
and ends here.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.errors import ConfigError
from tuneforge.models.adapters import (
    adapter_source,
    attach_lora,
    load_adapter,
    require_adapter_folder,
    set_lora_dropout,
)
from tuneforge.models.kind import is_peft, is_quantized


def with_attached_adapter(model, config):
    """`config` describing the attached adapter, which a run continuing it trains: its rank, alpha, target
    modules, dropout, bias, modules_to_save and layers, all counted as given (recipe auto chooses none of them,
    and a resume from the saved config.yaml rebuilds this adapter). A different rank, alpha or target modules
    given by the user is refused. An adapter loaded from a folder (and not trained in memory since) is recorded
    as from_adapter: the run's config.yaml then says where its weights started."""
    if config.method not in ("lora", "qlora") or not is_peft(model):
        return config
    source = adapter_source(model)
    run_dir = Path(config.output_dir).resolve() if config.output_dir else None
    if config.resume_from and source and run_dir and run_dir in Path(source).resolve().parents:
        raise ConfigError(
            f"this model already holds the adapter that run {run_dir} saved (it finished), so there is "
            "nothing to resume; to resume a run, load its base again (tf.load(...)) and resume there; to train "
            "this adapter further, give another output_dir and no resume_from"
        )
    if config.from_adapter and config.from_adapter != source:
        raise ConfigError(
            f"from_adapter names {config.from_adapter}, but an adapter ('{model.active_adapter}') is already "
            "attached to this model; train it without from_adapter, or unload it first (llm.unload_adapter())"
        )
    name = model.active_adapter  # named after its folder when loaded, not "default"
    modules = [module_name for module_name, _ in model.named_modules()]
    shaped = _with_adapter_shape(config, model.peft_config[name], f"the loaded adapter '{name}'", modules)
    return shaped.replace(from_adapter=source) if source else shaped


def with_adapter_from_folder(config):
    """`config` describing the adapter `from_adapter` names (read from its adapter_config.json), as
    with_attached_adapter describes an attached one: a run of it starts from that adapter's weights."""
    if not config.from_adapter or config.method not in ("lora", "qlora"):
        return config
    from peft import PeftConfig

    folder = require_adapter_folder(config.from_adapter, "from_adapter")
    if config.output_dir and Path(config.output_dir).resolve() in folder.resolve().parents:
        raise ConfigError(
            f"from_adapter {config.from_adapter} is the adapter of this run's own output_dir; a run training it "
            "further writes into another output_dir"
        )
    shaped = _with_adapter_shape(config, PeftConfig.from_pretrained(str(folder)), f"the adapter in {folder}")
    return shaped.replace(from_adapter=str(folder))  # one spelling, so a resume compares like with like


def warn_about_another_base(model, folder) -> None:
    """Warn when the adapter in `folder` names another base model than `model` (by folder or hub name: the
    same model converted on another machine has another path): its weights may not fit this model's."""
    import json
    import warnings

    saved = json.loads((require_adapter_folder(folder) / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    here = getattr(model, "name_or_path", "") or ""
    if saved and here and Path(str(saved)).name != Path(str(here)).name:
        warnings.warn(
            f"the adapter in {folder} was trained on {saved}, and this run's model is {here}: an adapter fits "
            "only the base it was trained on (same layer shapes) and learnt its changes for that base's weights",
            stacklevel=2,
        )


def _short_names(targets, modules: list[str] | None) -> list[str]:
    """PEFT saves all-linear as every module's full path ('model.layers.0.mlp.up_proj', ...): the short names
    (up_proj, ...) say the same where they pick out exactly those modules (always, for a folder's adapter,
    which loads from its own adapter_config.json), so config.yaml and the report stay readable."""
    short = sorted({str(target).rsplit(".", 1)[-1] for target in targets})
    if not all("." in str(target) for target in targets):
        return sorted(targets)
    if modules is not None:  # every module of those names carries the adapter (wraps a base_layer)?
        wrapped = {m.rsplit(".", 1)[0] for m in modules if m.endswith(".base_layer")}
        if not {m for m in modules if m.rsplit(".", 1)[-1] in short} <= wrapped:
            return sorted(targets)
    return short


def _with_adapter_shape(config, adapter, label: str, modules: list[str] | None = None):
    targets = getattr(adapter, "target_modules", None)
    if not hasattr(adapter, "r") or not isinstance(targets, (set, list, tuple)):
        raise ConfigError(
            f"{label} is not a LoRA naming its target modules (PEFT type "
            f"{getattr(adapter, 'peft_type', '?')}, targets {targets!r}); tuneforge continues those only: "
            "start from the base"
        )
    targets = _short_names(targets, modules)
    layers = adapter.layers_to_transform
    found = {
        "rank": adapter.r,
        "alpha": adapter.lora_alpha,
        "target_modules": targets,
        "lora_dropout": adapter.lora_dropout,
        "bias": adapter.bias,
        "modules_to_save": sorted(adapter.modules_to_save or []),
        "layers_to_transform": [layers] if isinstance(layers, int) else list(layers or []),
        "layers_pattern": adapter.layers_pattern if isinstance(adapter.layers_pattern, str) else None,
        "use_rslora": bool(getattr(adapter, "use_rslora", False)),
        "use_dora": bool(getattr(adapter, "use_dora", False)),
    }
    for key in ("rank", "alpha"):
        asked = getattr(config, key)
        if key in config.given_keys and asked != found[key]:
            raise ConfigError(
                f"{label} has {key} {found[key]:g} but {key} {asked:g} was asked for; a "
                f"LoRA's {key} cannot change: leave {key} out (it is {found[key]:g}) or start from the base"
            )
    # its weights' shape, and how they scale, too
    for key in ("bias", "modules_to_save", "layers_to_transform", "layers_pattern", "use_rslora", "use_dora"):
        asked = getattr(config, key)
        asked = (
            sorted(asked) if key == "modules_to_save" else list(asked) if isinstance(asked, list) else asked
        )
        if key in config.given_keys and asked != found[key]:
            raise ConfigError(
                f"{label} has {key} {found[key]!r} but {key} {asked!r} was asked for; an adapter's {key} "
                f"cannot change: leave {key} out or start from the base"
            )
    if "lora_dropout" in config.given_keys:  # a training setting, not a shape: the one given trains
        del found["lora_dropout"]
    named = "target_modules" in config.given_keys and config.target_modules != ["all-linear"]
    if named and sorted(config.target_modules) != found["target_modules"]:
        raise ConfigError(
            f"{label} trains {', '.join(found['target_modules'])}, not "
            f"{', '.join(config.target_modules)}; its modules cannot change: leave target_modules out or "
            "start from the base"
        )
    return config.replace(**found)


def prepare_for_training(model, config):
    """Return the model with exactly the weights the method trains set to require grad."""
    import torch

    if config.method in ("lora", "qlora"):
        if is_peft(model):  # continue training the adapter already attached (e.g. a second llm.train call)
            config = with_attached_adapter(model, config)  # refuses another rank or alpha
            for name, param in model.named_parameters():
                param.requires_grad_("lora_" in name or "modules_to_save" in name)
            set_lora_dropout(model, config.lora_dropout)
            return model
        model.requires_grad_(False)
        if config.from_adapter:  # its shape is already in config (with_adapter_from_folder)
            warn_about_another_base(model, config.from_adapter)
            # PEFT draws initial weights it then overwrites: those draws must not move the run's random stream,
            # so the run's dropout draws are those of the same adapter attached before the run (llm.train)
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                model = load_adapter(model, config.from_adapter, trainable=True)
            set_lora_dropout(model, config.lora_dropout)
            return model
        # QLoRA: the unquantized weights (embeddings, head, norms) stay frozen in the compute dtype, as LoRA's
        # base does. PEFT's prepare_model_for_kbit_training casts them to fp32: on an AMX CPU those casts took 15%
        # of a step (1.81 -> 1.53 s, benchmarks/step_profile.py --case qlora-4bit) and twice their memory; the
        # losses and adapter gradients agree within bf16 rounding (tests/unit/train/test_speed_levers.py).
        if config.method == "qlora" and not is_quantized(model):
            raise ConfigError(
                "method qlora needs a base loaded quantized; load it with quantization (the "
                "CLI and LLM.train do this for you)"
            )
        return attach_lora(
            model,
            config.rank,
            config.alpha,
            config.lora_dropout,
            config.target_modules,
            bias=config.bias,
            modules_to_save=config.modules_to_save,
            layers_to_transform=config.layers_to_transform,
            layers_pattern=config.layers_pattern,
            use_rslora=config.use_rslora,
            use_dora=config.use_dora,
        )
    if config.method in ("full", "scratch"):
        if is_peft(model):
            import warnings

            warnings.warn(
                f"the model holds the adapter '{model.active_adapter}': a {config.method} run folds it into the "
                "base weights first and trains the merged model (load the plain base to train without it)",
                stacklevel=2,
            )
            model = model.merge_and_unload()
        # full fine-tuning keeps fp32 master weights; bf16/fp16 run as autocast compute only
        model.to(torch.float32)
        model.requires_grad_(True)
        return model
    raise ConfigError(f"method '{config.method}' is not supported")


def required_weight_dtype(config, precision: str) -> str:
    """The weight dtype a method trains in: LoRA keeps the frozen base in the compute precision."""
    return precision if config.method in ("lora", "qlora") else "fp32"
