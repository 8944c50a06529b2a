"""Models: load a base (default, folder, .gguf, hub id), prepare it for a method, and load, switch or merge
LoRA adapters. `prepare_base` is the one step a run calls to ready the model it trains.

    from tuneforge.models import load_model, prepare_base
    model, tokenizer, source = load_model("default")
"""

from tuneforge.models.adapters import attach_lora, load_adapter
from tuneforge.models.loading import ModelSource, load_model
from tuneforge.models.preparation import prepare_base
from tuneforge.paths import tuneforge_home

__all__ = ["ModelSource", "attach_lora", "load_adapter", "load_model", "prepare_base", "tuneforge_home"]
