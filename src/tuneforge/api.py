"""The Python API: load a model, generate, look at next-token probabilities, train, evaluate, save, merge.

    import tuneforge as tf
    llm = tf.load("default")
    print(llm.generate("To make a cheese sandwich "))
    run = llm.train("cheese.txt", method="lora", epochs=1, learning_rate=1e-3)
    llm.save("my-adapter")
    llm2 = tf.load("default", adapter="my-adapter")
    print(llm2.perplexity("heldout.txt", adapters=["base", "default"]))   # before/after, side by side
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, load_config
from tuneforge.errors import ModelError
from tuneforge.evaluate.compare import BASE, Comparison, Variant, compare
from tuneforge.evaluate.perplexity import PerplexityResult, append_history, perplexity
from tuneforge.evaluate.tasks import TaskScores, read_records, score_task
from tuneforge.generate import GenerationSettings, generate, next_token_probs, resolve_settings, stream
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
    def generate(self, prompt: str | list[dict], settings: GenerationSettings | None = None,
                 **overrides: Any) -> str:
        """Continue `prompt`; settings: max_new_tokens, do_sample, temperature, top_k, top_p, min_p, typical_p,
        repetition_penalty, no_repeat_ngram_size, num_beams, early_stopping, stop, seed, chat, ...

        >>> LLM.load().generate("To be or not to", max_new_tokens=5, do_sample=False)
        """
        return generate(self.model, self.tokenizer, prompt, settings, **overrides)

    def stream(self, prompt: str | list[dict], settings: GenerationSettings | None = None,
               **overrides: Any) -> Iterator[str]:
        """Yield the continuation piece by piece as it is generated (same text as `generate`).

        >>> for piece in LLM.load().stream("To be or not to", max_new_tokens=10): print(piece, end="")
        """
        return stream(self.model, self.tokenizer, prompt, settings, **overrides)

    def next_token_probs(self, text: str, k: int = 10, adapters: list[str] | None = None):
        """The k most likely next tokens after `text` with their probabilities; with `adapters` (names from
        `self.adapters`, "base" for none), a dict from each name to its list, side by side.

        >>> LLM.load().next_token_probs("To be or not to", k=5)
        """
        if adapters is None:
            return next_token_probs(self.model, self.tokenizer, text, k)
        result = {}
        for name in adapters:
            with self.use_adapter(name):
                result[name] = next_token_probs(self.model, self.tokenizer, text, k)
        return result

    # ------------------------------------------------------------------ evaluation
    def perplexity(self, data: Any, *, max_length: int | None = None, stride: int | None = None,
                   adapters: list[str] | None = None, history: str | Path | None = None, shape: str = "auto"):
        """Sliding-window perplexity on a text file, string, list of strings or prepared examples; with
        `adapters`, a list with one result per adapter ("base" for none). `history` appends to a JSONL file.

        >>> LLM.load().perplexity("To be or not to be, that is the question.", max_length=8, stride=4).perplexity
        """
        def one(label: str) -> PerplexityResult:
            return perplexity(self.model, self.tokenizer, data, max_length=max_length, stride=stride,
                              label=label, shape=shape)

        if adapters is None:
            results = [one(self._label())]
        else:
            results = []
            for name in adapters:
                with self.use_adapter(name):
                    results.append(one(name))
        if history is not None:
            append_history(history, results)
        return results if adapters is not None else results[0]

    def evaluate(self, data: str | Path | list[tuple[str, str]], *, metrics: tuple = ("exact_match", "rouge_l",
                 "numeric"), template: str = "{input}\n", input_key: str | None = None,
                 output_key: str | None = None, adapters: list[str] | None = None,
                 settings: GenerationSettings | None = None, **overrides: Any):
        """Task scores: generate an output per input of a JSON/JSONL file (or (input, reference) pairs) and
        score it (exact match, ROUGE-L, numeric answer). Greedy, one line, unless settings say otherwise.

        >>> LLM.load().evaluate([("2 + 2 =", "4")], max_new_tokens=5).means
        """
        records = read_records(data, input_key, output_key) if isinstance(data, str | Path) else list(data)
        overrides = {"do_sample": False, "stop": ["\n"], **overrides}

        def one(label: str) -> TaskScores:
            return score_task(lambda prompt: self.generate(prompt, settings, **overrides), records,
                              label=label, metrics=metrics, template=template)

        if adapters is None:
            return one(self._label())
        scores = {}
        for name in adapters:
            with self.use_adapter(name):
                scores[name] = one(name)
        return scores

    def compare(self, prompts: list[str], *, adapters: list[str] | None = None, seeds: list[int] | tuple = (0,),
                heldout: Any = None, settings: GenerationSettings | None = None, max_length: int | None = None,
                stride: int | None = None, shape: str = "auto", **overrides: Any) -> Comparison:
        """Base vs each loaded adapter on the same prompts, seeds and settings, plus held-out perplexity.

        >>> llm = LLM.load(); llm.load_adapter("runs/demo/adapter", name="cheese")
        >>> llm.compare(["To make a cheese sandwich "], seeds=[0, 1]).write("runs/demo")
        """
        names = adapters if adapters is not None else [BASE, *self.adapters]
        variants = [Variant(name, self, name) for name in names]
        return compare(variants, prompts, seeds=seeds, settings=resolve_settings(settings, **overrides),
                       heldout=heldout, max_length=max_length, stride=stride, shape=shape)

    def _label(self) -> str:
        if not self.adapters:
            return BASE
        return self.model.active_adapter

    # ------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> list[str]:
        """Names of the LoRA adapters loaded on this model (an adapter given to `load` is named 'default')."""
        return list(self.model.peft_config) if is_peft(self.model) else []

    def load_adapter(self, path: str | Path, name: str | None = None) -> str:
        """Add a saved LoRA adapter beside any already loaded and make it the active one; returns its name.

        >>> LLM.load().load_adapter("runs/demo/adapter", name="cheese")
        """
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"'{path}' is not an adapter folder (no adapter_config.json)")
        name = name or (path.parent.name if path.name in ("adapter", "") else path.name)
        if name == BASE or name in self.adapters:
            raise ModelError(f"an adapter named '{name}' is already loaded (or reserved); pass another name")
        if is_peft(self.model):
            self.model.load_adapter(str(path), adapter_name=name)
        else:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        self.model.set_adapter(name, inference_mode=True)
        self.model.eval()
        return name

    @contextmanager
    def use_adapter(self, name: str | None):
        """Within the block, only adapter `name` is active ("base" or None: no adapter at all).

        >>> with llm.use_adapter("base"): print(llm.generate("To be or not to"))
        """
        if name in (None, BASE):
            if is_peft(self.model):
                with self.model.disable_adapter():
                    yield self
            else:
                yield self
            return
        if name not in self.adapters:
            raise ModelError(f"no adapter named '{name}' is loaded; loaded: {', '.join(self.adapters) or 'none'}")
        previous = self.model.active_adapter
        self.model.set_adapter(name, inference_mode=True)
        try:
            yield self
        finally:
            self.model.set_adapter(previous, inference_mode=True)

    def unload_adapter(self, name: str | None = None) -> None:
        """Remove adapter `name`, or every adapter (back to the plain base model) when no name is given.

        >>> llm.unload_adapter()
        """
        if not is_peft(self.model):
            return
        if name is not None and len(self.adapters) > 1:
            if name not in self.adapters:
                raise ModelError(f"no adapter named '{name}' is loaded")
            self.model.delete_adapter(name)
            return
        self.model = self.model.unload()

    def merge(self, path: str | Path | None = None) -> LLM:
        """Fold the active adapter into the base weights (the model becomes a plain one); save it to `path` as
        a Hugging Face safetensors folder if given. A 4/8-bit base is reloaded in fp32 first (with a warning).

        >>> LLM.load("default", adapter="runs/demo/adapter", precision="fp32").merge("merged/")
        """
        from tuneforge.models.export import is_quantized, merged_copy, save_folder

        if not is_peft(self.model):
            raise ModelError("there is no adapter to merge; load one with adapter=... or load_adapter()")
        if is_quantized(self.model):
            self.model = merged_copy(self.model, self.source.path, self.trust_remote_code).to(self.device)
            self.precision = "fp32"
        else:
            self.model = self.model.merge_and_unload().eval()
        if path is not None:
            save_folder(self.model, self.tokenizer, path)
        return self

    def export_gguf(self, path: str | Path, *, dtype: str = "f16", verify: bool = True):
        """Write this model (adapter merged first) to one GGUF file; with `verify`, load it back with
        transformers and compare top-1 next tokens on 20 prompts (returns that check, else the path).

        >>> LLM.load("default", precision="fp32").export_gguf("smollm2.gguf").agreement
        """
        from tuneforge.models.export import export_gguf, verify_gguf

        if is_peft(self.model):
            self.merge()
        written = export_gguf(self.model, self.tokenizer, path, dtype=dtype, name=Path(self.source.spec).name)
        return verify_gguf(self.model, self.tokenizer, written) if verify else written

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
        if run_config.method == "qlora":
            self._ensure_quantized(run_config, precision)
        elif run_config.method != "scratch":
            self._ensure_weight_dtype(required_weight_dtype(run_config, precision))
        self.model, result = run_training(self.model, self.tokenizer, run_config, device=self.device,
                                          precision=precision, show_progress=show_progress,
                                          log=log.info if not show_progress else print)
        if result.tokenizer is not None:  # scratch with tokenizer: train brings its own
            self.tokenizer = result.tokenizer
        self.last_run = result
        return result

    def _ensure_quantized(self, config: RunConfig, precision: str) -> None:
        """QLoRA: reload the base quantized by bitsandbytes (bits, quant_type, double_quant) unless it is."""
        from tuneforge.errors import ConfigError
        from tuneforge.models.quantization import bnb_config, is_quantized

        if is_quantized(self.model):
            return
        if is_peft(self.model):
            raise ConfigError("method qlora trains a new adapter on a quantized base; unload the current adapter "
                              "first (llm.unload_adapter()) or use method: lora to keep training it")
        quantization = bnb_config(config.bits, config.quant_type, config.double_quant, precision)
        self.model, _, _ = load_model(self.source.path, device=self.device, precision=precision,
                                      trust_remote_code=self.trust_remote_code, quantization=quantization)
        self.precision = precision

    def _ensure_weight_dtype(self, precision: str) -> None:
        """Reload the base weights from disk when a method needs another dtype (full fine-tuning: fp32)."""
        from tuneforge.models.quantization import is_quantized

        dtype = torch_dtype(precision)
        if is_peft(self.model):
            if is_quantized(self.model):  # a QLoRA adapter keeps training on its quantized base
                return
            import torch

            for name, param in self.model.named_parameters():  # adapter weights stay fp32 master weights
                param.data = param.data.to(torch.float32 if "lora_" in name else dtype)
            return
        if next(self.model.parameters()).dtype == dtype and not is_quantized(self.model):
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
