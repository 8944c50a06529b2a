"""LoRA adapters through PEFT: attach, load one or several side by side, switch, remove, merge.

    from tuneforge.models.adapters import active_adapter, add_adapter, attach_lora
    model = attach_lora(model, rank=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"])
    model.save_pretrained("runs/x/adapter")   # adapter_config.json + adapter_model.safetensors
    model, name = add_adapter(base, "runs/x/adapter", name="cheese")
    with active_adapter(model, "base"):        # no adapter at all inside the block
        ...

Every function takes the model and returns the model it leaves (PEFT wraps and unwraps), so a face such as
`LLM` only keeps the returned object; none of them touches a weight's values except `merge_active_adapter`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneforge.errors import ModelError
from tuneforge.models.kind import is_peft, is_quantized, weight_count

BASE = "base"  # the name that means "no adapter active"; never the name of a loaded adapter


def linear_module_names(model) -> list[str]:
    """Distinct short names of the model's Linear layers (what `target_modules` can name)."""
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    return sorted(names)


def embedding_module_names(model) -> list[str]:
    """Short names of the input embedding and the output head (what `modules_to_save` can name)."""
    names = []
    for wanted in (model.get_input_embeddings(), model.get_output_embeddings()):
        found = next((name for name, module in model.named_modules() if module is wanted and name), None)
        if wanted is not None and found and found.rsplit(".", 1)[-1] not in names:
            names.append(found.rsplit(".", 1)[-1])
    return names


def check_module_names(model, target_modules: list[str], modules_to_save: list[str] | None = None) -> None:
    """Refuse target_modules or modules_to_save this model does not have, naming the ones it has."""
    known = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    wanted = [t for t in target_modules if t != "all-linear"] + list(modules_to_save or [])
    missing = [t for t in wanted if t not in known]
    if missing:
        raise ModelError(
            f"modules {missing} are not in this model; it has linear layers "
            f"{', '.join(linear_module_names(model))} (or use all-linear); see tuneforge modules"
        )


def attach_lora(
    model,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: list[str],
    bias: str = "none",
    modules_to_save: list[str] | None = None,
    layers_to_transform: list[int] | None = None,
    layers_pattern: str | None = None,
    use_rslora: bool = False,
    use_dora: bool = False,
):
    """Wrap `model` in a PeftModel whose only trainable weights are the LoRA matrices (and modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = (
        "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)
    )
    check_module_names(model, targets if isinstance(targets, list) else [], modules_to_save)
    wanted = (targets if isinstance(targets, list) else []) + list(modules_to_save or [])
    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        bias=bias,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=list(modules_to_save or []) or None,
        layers_to_transform=layers_to_transform or None,
        layers_pattern=layers_pattern if layers_to_transform else None,
        exclude_modules=_linears_with_own_forward(model) or None if targets == "all-linear" else None,
        use_rslora=use_rslora,
        use_dora=use_dora,
        task_type="CAUSAL_LM",
        # a tied embed_tokens/lm_head in the adapter must stay tied, or merging would untie them
        ensure_weight_tying=bool(getattr(model.config, "tie_word_embeddings", False))
        and bool({"embed_tokens", "lm_head", "wte"} & set(wanted)),
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as error:  # e.g. layers_to_transform naming layers the model does not have
        fix = (
            "; a mixture of experts' fused expert weights take LoRA only without dropout: set lora_dropout: 0, or "
            "name target_modules that leave the experts out (see tuneforge modules)"
            if "ParamWrapper" in str(error) and "lora_dropout" in str(error)
            else ""
        )
        raise ModelError(f"cannot attach LoRA: {error}{fix}") from None


def _linears_with_own_forward(model) -> list[str]:
    """A model's own nn.Linear subclasses with a forward of their own (phimoe's router returns (weights,
    experts)): PEFT's all-linear takes them, and LoRA's base(x) + update then fails on what they return, so they
    are left out. Quantized linears (bitsandbytes' Linear4bit) come from other packages and stay in."""
    import torch

    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and type(module).forward is not torch.nn.Linear.forward
        and type(module).__module__.startswith("transformers.models.")
    ]


def require_safetensors_adapter(path: Path) -> None:
    """Adapters load only from adapter_model.safetensors: a .bin adapter is a pickle, which can run code."""
    if not (path / "adapter_model.safetensors").is_file():
        found = (
            " (it holds adapter_model.bin, a pickle, which could run code when loaded)"
            if (path / "adapter_model.bin").exists()
            else ""
        )
        raise ModelError(
            f"'{path}' has no adapter_model.safetensors{found}; tuneforge loads adapters only as "
            "safetensors: re-save a trusted adapter with save_pretrained(safe_serialization=True)"
        )


def require_adapter_folder(path: str | Path, key: str | None = None) -> Path:
    """The adapter folder `path` names: the folder itself, or the adapter/ inside a run or checkpoint folder.
    Refused, with what to pass instead, when it holds no safetensors adapter."""
    path = Path(path)
    named = f"{key} '{path}'" if key else f"'{path}'"
    if not path.exists():
        raise ModelError(f"{named} does not exist; pass a run folder or its adapter folder, e.g. runs/NAME")
    if not (path / "adapter_config.json").is_file() and (path / "adapter" / "adapter_config.json").is_file():
        path = path / "adapter"  # a run folder or a checkpoint folder: the adapter it saved
    if not (path / "adapter_config.json").is_file():
        finished_full = (path / "model").is_dir() or (path / "config.json").is_file()
        steps = sorted(
            (int(p.parent.name.removeprefix("step-")), p)
            for p in path.glob("checkpoints/step-*/adapter")
            if p.parent.name.removeprefix("step-").isdigit()
        )
        if finished_full:
            hint = "; it holds a whole model (a full fine-tune): load it as the model instead"
        elif steps:  # a run that stopped before its end: its checkpoints hold adapters
            hint = (
                f"; the run did not finish: pass its newest checkpoint, {steps[-1][1].parent}, or resume it"
            )
        else:
            hint = "; pass the folder a training run saved as <run>/adapter"
        raise ModelError(f"{named} is not an adapter folder (no adapter_config.json){hint}")
    require_safetensors_adapter(path)
    return path


def load_adapter(model, path: str | Path, trainable: bool = False):
    """Put a saved PEFT adapter (its folder, or a run or checkpoint folder holding adapter/) on `model` (a plain
    transformers model)."""
    from peft import PeftModel

    folder = require_adapter_folder(path)
    model = PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    record_adapter_source(model, model.active_adapter, folder)
    return model


def record_adapter_source(model, name: str, folder: str | Path | None) -> None:
    """Note that adapter `name` holds the weights saved in `folder` (None: weights of its own, trained in memory
    since), so a run training it further records where it started (from_adapter) and can be made again."""
    sources = model.__dict__.setdefault("_tuneforge_adapter_sources", {})
    sources[name] = None if folder is None else str(folder)


def adapter_source(model) -> str | None:
    """The folder whose saved weights the active adapter holds, or None (none loaded, trained since, or the
    folder deleted since, as HappyTransformer's temporary run folders are)."""
    if not is_peft(model):
        return None
    source = model.__dict__.get("_tuneforge_adapter_sources", {}).get(model.active_adapter)
    return source if source and (Path(source) / "adapter_config.json").is_file() else None


def set_lora_dropout(model, p: float) -> None:
    """The active adapter's LoRA dropout set to `p` in every layer (PEFT keeps an Identity for 0), as a run
    given another lora_dropout than the adapter was saved with trains it; saved with the adapter too."""
    import torch

    name = model.active_adapter
    if model.peft_config[name].lora_dropout == p:
        return
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict) and name in dropouts:
            dropouts[name] = torch.nn.Dropout(p) if p > 0 else torch.nn.Identity()
    model.peft_config[name].lora_dropout = p


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(weight_count(p) for p in model.parameters() if p.requires_grad)
    total = sum(weight_count(p) for p in model.parameters())
    return trainable, total


# ---------------------------------------------------------------------------------------------- several adapters
def adapter_names(model) -> list[str]:
    """Names of the adapters loaded on `model` (one given to `load_adapter` is named 'default')."""
    return list(model.peft_config) if is_peft(model) else []


def active_adapter_name(model) -> str:
    """The adapter whose weights act now, or "base" when none is loaded."""
    return model.active_adapter if is_peft(model) else BASE


def set_active_adapter(model, name: str) -> None:
    """From now on only adapter `name` acts (use active_adapter for a block)."""
    loaded = adapter_names(model)
    if name not in loaded:
        raise ModelError(f"no adapter named '{name}' is loaded; loaded: {', '.join(loaded) or 'none'}")
    model.set_adapter(name, inference_mode=True)


def base_model(model):
    """The base model under any adapters (the model itself when it has none)."""
    return model.get_base_model() if is_peft(model) else model


def add_adapter(model, path: str | Path, name: str | None = None):
    """Load the adapter saved at `path` beside any already on `model` and make it the active one.

    Returns (model, name); `name` defaults to the run folder's name for <run>/adapter, else the folder's.
    """
    path = require_adapter_folder(path)
    name = name or (path.parent.name if path.name in ("adapter", "") else path.name)
    if name == BASE or name in adapter_names(model):
        raise ModelError(f"an adapter named '{name}' is already loaded (or reserved); pass another name")
    if is_peft(model):
        model.load_adapter(str(path), adapter_name=name)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
    record_adapter_source(model, name, path)
    model.set_adapter(name, inference_mode=True)
    model.eval()
    return model, name


@contextmanager
def active_adapter(model, name: str | None) -> Iterator[None]:
    """Within the block only adapter `name` acts ("base" or None: no adapter at all); then as before."""
    if name in (None, BASE):
        if is_peft(model):
            with model.disable_adapter():
                yield
        else:
            yield
        return
    loaded = adapter_names(model)
    if name not in loaded:
        raise ModelError(f"no adapter named '{name}' is loaded; loaded: {', '.join(loaded) or 'none'}")
    previous = model.active_adapter
    model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        model.set_adapter(previous, inference_mode=True)


def remove_adapter(model, name: str | None = None):
    """Remove adapter `name`, or every adapter when no name is given (or it is the last one); returns the
    model left: still PEFT-wrapped while adapters remain, else the plain base."""
    if not is_peft(model):
        if name is not None:
            raise ModelError(f"no adapter named '{name}' is loaded; loaded: none")
        return model
    loaded = adapter_names(model)
    if name is not None and name not in loaded:
        raise ModelError(f"no adapter named '{name}' is loaded; loaded: {', '.join(loaded)}")
    if name is not None and len(loaded) > 1:
        model.delete_adapter(name)
        return model
    return model.unload()


def merge_active_adapter(model, source_path: str, trust_remote_code: bool = False, device: str = "cpu"):
    """Fold the active adapter into the base weights; returns the plain merged model, in eval mode.

    A 4/8-bit base (QLoRA) is not merged in place, which would round the update away: the base is reloaded in
    fp32 from `source_path` and the adapter merged into that (with a warning; see export.merged_copy).
    """
    from tuneforge.models.export import merged_copy

    if not is_peft(model):
        raise ModelError("there is no adapter to merge; load one with adapter=... or load_adapter()")
    if is_quantized(model):
        return merged_copy(model, source_path, trust_remote_code).to(device)
    return model.merge_and_unload().eval()
