"""Models: load a base (default, folder, .gguf, hub id) and attach, save or load LoRA adapters."""

from tuneforge.models.adapters import attach_lora, load_adapter
from tuneforge.models.loading import ModelSource, load_model, tuneforge_home

__all__ = ["ModelSource", "attach_lora", "load_adapter", "load_model", "tuneforge_home"]
