"""The Python API: load a model, generate, train, save.

    import tuneforge as tf
    llm = tf.load("default")
    print(llm.generate("To make a cheese sandwich "))
    run = llm.train("cheese.txt", method="lora", epochs=1, learning_rate=1e-3)
    llm.save("my-adapter")
    llm2 = tf.load("default", adapter="my-adapter")
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, load_config
from tuneforge.generate import GenerationSettings, generate, next_token_probs
from tuneforge.models.adapters import load_adapter
from tuneforge.models.loading import ModelSource, load_model, pick_device, pick_precision, torch_dtype
from tuneforge.models.methods import is_peft, required_weight_dtype
from tuneforge.train.loop import TrainResult
from tuneforge.train.run import run_training

log = logging.getLogger(__name__)


class LLM:
    """A causal language model with its tokenizer, optionally carrying a LoRA adapter."""

    def __init__(self, model, tokenizer, source: ModelSource, device: str, precision: str,
                 trust_remote_code: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.device = device
        self.precision = precision
        self.trust_remote_code = trust_remote_code
        self.last_run: TrainResult | None = None

    @classmethod
    def load(cls, model: str = "default", adapter: str | Path | None = None, *, device: str = "auto",
             precision: str = "auto", trust_remote_code: bool = False) -> LLM:
        """Load `model` ('default', a folder, a .gguf file or a hub id), with an optional LoRA adapter folder.

        >>> llm = LLM.load("default", precision="fp32")
        """
        device = pick_device(device)
        precision = pick_precision(precision, device)
        base, tokenizer, source = load_model(model, device=device, precision=precision,
                                             trust_remote_code=trust_remote_code)
        if adapter is not None:
            base = load_adapter(base, adapter)
        return cls(base, tokenizer, source, device, precision, trust_remote_code)

    # ------------------------------------------------------------------ inference
    def generate(self, prompt: str, settings: GenerationSettings | None = None, **overrides: Any) -> str:
        """Continue `prompt`; settings: max_new_tokens, do_sample, temperature, top_k, top_p, seed, chat, ...

        >>> LLM.load().generate("To be or not to", max_new_tokens=5, do_sample=False)
        """
        return generate(self.model, self.tokenizer, prompt, settings, **overrides)

    def next_token_probs(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """The k most likely next tokens after `text` with their probabilities."""
        return next_token_probs(self.model, self.tokenizer, text, k)

    # ------------------------------------------------------------------ training
    def train(self, data: str | Path | None = None, *, config: str | Path | RunConfig | None = None,
              show_progress: bool = True, **settings: Any) -> TrainResult:
        """Fine-tune this model in place; keyword arguments are the run config keys (rank, epochs, ...).

        >>> run = llm.train("cheese.txt", method="lora", epochs=1, learning_rate=1e-3)
        >>> run.final_loss, run.saved_to
        """
        overrides = dict(settings)
        if data is not None:
            overrides["data"] = str(data)
        overrides["model"] = self.source.spec
        if isinstance(config, RunConfig):
            run_config = config.replace(**overrides)
        else:
            run_config = load_config(config, overrides)
        precision = pick_precision(run_config.precision, self.device)
        self._ensure_weight_dtype(required_weight_dtype(run_config, precision))
        self.model, result = run_training(self.model, self.tokenizer, run_config, device=self.device,
                                          precision=precision, show_progress=show_progress,
                                          log=log.info if not show_progress else print)
        self.last_run = result
        return result

    def _ensure_weight_dtype(self, precision: str) -> None:
        """Reload the base weights from disk when a method needs another dtype (full fine-tuning: fp32)."""
        dtype = torch_dtype(precision)
        if next(self.model.parameters()).dtype == dtype:
            return
        if is_peft(self.model):  # cast the frozen base; adapter weights stay fp32 master weights
            import torch

            for name, param in self.model.named_parameters():
                param.data = param.data.to(torch.float32 if "lora_" in name else dtype)
            return
        self.model, _, _ = load_model(self.source.path, device=self.device, precision=precision,
                                      trust_remote_code=self.trust_remote_code)
        self.precision = precision

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path) -> Path:
        """Save the adapter (PEFT format) if one is attached, else the whole model and tokenizer."""
        path = Path(path)
        self.model.save_pretrained(path)
        if not is_peft(self.model):
            self.tokenizer.save_pretrained(path)
        return path

    def __repr__(self) -> str:
        adapter = " + LoRA adapter" if is_peft(self.model) else ""
        return f"LLM({self.source.spec!r}{adapter}, device={self.device!r}, precision={self.precision!r})"


def load(model: str = "default", adapter: str | Path | None = None, **kwargs: Any) -> LLM:
    """Shorthand for `LLM.load`."""
    return LLM.load(model, adapter, **kwargs)
