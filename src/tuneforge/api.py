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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, load_config
from tuneforge.errors import ConfigError
from tuneforge.evaluate.compare import BASE, Comparison, Variant, compare
from tuneforge.evaluate.perplexity import PerplexityResult, append_history, perplexity
from tuneforge.evaluate.tasks import TaskScores, is_alpaca, read_records, score_task
from tuneforge.generate import GenerationSettings, generate, next_token_probs, resolve_settings, stream
from tuneforge.hardware import pick_device, pick_precision
from tuneforge.models.adapters import (
    active_adapter,
    active_adapter_name,
    adapter_names,
    add_adapter,
    load_adapter,
    merge_active_adapter,
    remove_adapter,
    set_active_adapter,
)
from tuneforge.models.kind import is_peft, is_quantized
from tuneforge.models.loading import ModelSource, adapter_base, load_model
from tuneforge.models.methods import required_weight_dtype
from tuneforge.models.saving import save_active_adapter, save_pretrained
from tuneforge.recipe import run_training
from tuneforge.train.loop import TrainResult

LOADED_KEYS = ("model", "device", "trust_remote_code")  # how an LLM was loaded: fixed for its train()

log = logging.getLogger(__name__)


class LLM:
    """A causal language model with its tokenizer, optionally carrying a LoRA adapter."""

    def __init__(
        self,
        model,
        tokenizer,
        source: ModelSource,
        device: str,
        precision: str,
        trust_remote_code: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.device = device
        self.precision = precision
        self.trust_remote_code = trust_remote_code
        self.last_run: TrainResult | None = None

    @classmethod
    def load(
        cls,
        model: str = "default",
        adapter: str | Path | None = None,
        *,
        device: str = "auto",
        precision: str = "auto",
        trust_remote_code: bool = False,
    ) -> LLM:
        """Load `model` ('default': the embedded SmolLM2-135M-Instruct; a folder, a .gguf file or a hub id),
        with an optional LoRA adapter folder; an adapter folder given as `model` loads the base it names with
        it (as transformers does). `device`: auto, cpu, cuda, mps; `precision`: auto, fp32, bf16, fp16. Then
        `.train(data, **keys)` (`tuneforge train --help` lists the keys), `.generate(prompt)`,
        `.perplexity(file)`, `.next_token_probs(text)`, `.merge()`, `.save(folder)`.

        >>> llm = LLM.load("default", precision="fp32")
        >>> llm = LLM.load("runs/cheese/adapter")          # its base (adapter_config.json says which) + it
        """
        if not isinstance(model, str | Path):
            raise ConfigError(
                f"model must be 'default', a folder, a .gguf file or a hub id (a string), not {model!r}"
            )
        model = str(model)
        base_of_adapter = adapter_base(model) if adapter is None and Path(model).is_dir() else None
        if base_of_adapter is not None:
            model, adapter = base_of_adapter, model
        device = pick_device(device)
        precision = pick_precision(precision, device)
        base, tokenizer, source = load_model(
            model, device=device, precision=precision, trust_remote_code=trust_remote_code
        )
        if adapter is not None:
            base = load_adapter(base, adapter)
        return cls(base, tokenizer, source, device, precision, trust_remote_code)

    # ------------------------------------------------------------------ inference
    def generate(
        self, prompt: str | list[dict], settings: GenerationSettings | None = None, **overrides: Any
    ) -> str:
        """Continue `prompt`; settings: max_new_tokens, do_sample, temperature, top_k, top_p, min_p, typical_p,
        repetition_penalty, no_repeat_ngram_size, num_beams, early_stopping, stop, seed, chat, ...

        >>> LLM.load().generate("To be or not to", max_new_tokens=5, do_sample=False)
        """
        return generate(self.model, self.tokenizer, prompt, settings, **overrides)

    def stream(
        self, prompt: str | list[dict], settings: GenerationSettings | None = None, **overrides: Any
    ) -> Iterator[str]:
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
    def perplexity(
        self,
        data: Any,
        *,
        max_length: int | None = None,
        stride: int | None = None,
        adapters: list[str] | None = None,
        history: str | Path | None = None,
        shape: str = "auto",
        encoding: str = "utf-8",
        progress: Callable[[int, int], None] | None = None,
    ):
        """Sliding-window perplexity on a text file, string, list of strings or prepared examples; with
        `adapters`, a list with one result per adapter ("base" for none). `history` appends to a JSONL file.
        `progress(done, total)` hears how many of the data's tokens each evaluation has read.

        >>> LLM.load().perplexity("To be or not to be, that is the question.", max_length=8, stride=4).perplexity
        """

        def one(label: str) -> PerplexityResult:
            return perplexity(
                self.model,
                self.tokenizer,
                data,
                max_length=max_length,
                stride=stride,
                label=label,
                shape=shape,
                encoding=encoding,
                progress=progress,
            )

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

    def evaluate(
        self,
        data: str | Path | list[tuple[str, str]],
        *,
        metrics: tuple = ("exact_match", "rouge_l", "numeric"),
        template: str = "{input}\n",
        input_key: str | None = None,
        output_key: str | None = None,
        adapters: list[str] | None = None,
        settings: GenerationSettings | None = None,
        format_file: str | None = "auto",
        **overrides: Any,
    ):
        """Task scores: generate an output per input of a JSON/JSONL file (or (input, reference) pairs) and
        score it (exact match, ROUGE-L, numeric answer). Greedy, one line, unless settings say otherwise.
        Alpaca records (instruction, output) are prompted as training renders them, through `format_file`
        ('auto': alpaca-format, training's default for them; None: through `template` like other records).

        >>> LLM.load().evaluate([("2 + 2 =", "4")], max_new_tokens=5).means
        """
        if isinstance(data, str | Path):
            if format_file == "auto":
                format_file = "alpaca-format" if input_key is None and is_alpaca(data) else None
            records = read_records(data, input_key, output_key, format_file)
            if format_file is not None:
                template = "{input}"  # the format's own prompt, as trained
        else:
            records = list(data)
        overrides = {"do_sample": False, "stop": ["\n"], **overrides}

        def one(label: str) -> TaskScores:
            return score_task(
                lambda prompt: self.generate(prompt, settings, **overrides),
                records,
                label=label,
                metrics=metrics,
                template=template,
            )

        if adapters is None:
            return one(self._label())
        scores = {}
        for name in adapters:
            with self.use_adapter(name):
                scores[name] = one(name)
        return scores

    def compare(
        self,
        prompts: list[str],
        *,
        adapters: list[str] | None = None,
        seeds: list[int] | tuple = (0,),
        heldout: Any = None,
        settings: GenerationSettings | None = None,
        max_length: int | None = None,
        stride: int | None = None,
        shape: str = "auto",
        encoding: str = "utf-8",
        **overrides: Any,
    ) -> Comparison:
        """Base vs each loaded adapter on the same prompts, seeds and settings, plus held-out perplexity.

        >>> llm = LLM.load(); llm.load_adapter("runs/demo/adapter", name="cheese")
        >>> llm.compare(["To make a cheese sandwich "], seeds=[0, 1]).write("runs/demo")
        """
        names = adapters if adapters is not None else [BASE, *self.adapters]
        variants = [Variant(name, self, name) for name in names]
        return compare(
            variants,
            prompts,
            seeds=seeds,
            settings=resolve_settings(settings, **overrides),
            heldout=heldout,
            max_length=max_length,
            stride=stride,
            shape=shape,
            encoding=encoding,
        )

    def _label(self) -> str:
        return active_adapter_name(self.model)

    # ------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> list[str]:
        """Names of the LoRA adapters loaded on this model (an adapter given to `load` is named 'default')."""
        return adapter_names(self.model)

    def load_adapter(self, path: str | Path, name: str | None = None) -> str:
        """Add a saved LoRA adapter beside any already loaded and make it the active one; returns its name.

        >>> LLM.load().load_adapter("runs/demo/adapter", name="cheese")
        """
        self.model, name = add_adapter(self.model, path, name)
        return name

    @property
    def active_adapter(self) -> str:
        """The adapter whose weights act now, or "base" when none is loaded."""
        return active_adapter_name(self.model)

    def set_adapter(self, name: str) -> None:
        """Make adapter `name` the active one from now on (`use_adapter` for one block only).

        >>> llm.set_adapter("cheese")
        """
        set_active_adapter(self.model, name)

    @contextmanager
    def use_adapter(self, name: str | None):
        """Within the block, only adapter `name` is active ("base" or None: no adapter at all).

        >>> with llm.use_adapter("base"): print(llm.generate("To be or not to"))
        """
        with active_adapter(self.model, name):
            yield self

    def unload_adapter(self, name: str | None = None) -> None:
        """Remove adapter `name`, or every adapter (back to the plain base model) when no name is given.

        >>> llm.unload_adapter()
        """
        self.model = remove_adapter(self.model, name)

    def merge(self, path: str | Path | None = None) -> LLM:
        """Fold the active adapter into the base weights (the model becomes a plain one); save it to `path` as
        a Hugging Face safetensors folder if given. A 4/8-bit base is reloaded in fp32 first (with a warning).

        >>> LLM.load("default", adapter="runs/demo/adapter", precision="fp32").merge("merged/")
        """
        from tuneforge.models.export import save_folder

        reloaded_in_fp32 = is_quantized(self.model)
        self.model = merge_active_adapter(self.model, self.source.path, self.trust_remote_code, self.device)
        if reloaded_in_fp32:
            self.precision = "fp32"
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
    def train(
        self,
        data: str | Path | None = None,
        *,
        config: str | Path | RunConfig | dict | None = None,
        show_progress: bool = True,
        **settings: Any,
    ) -> TrainResult:
        """Fine-tune this model in place; keyword arguments are the run config keys (rank, epochs, ...).

        >>> run = llm.train("cheese.txt", method="lora", epochs=1, learning_rate=1e-3)
        >>> run.final_loss, run.saved_to
        """
        if isinstance(config, dict):  # the keys as a dict: the same as keyword arguments (these win)
            settings, config = {**config, **settings}, None
        self._refuse_load_settings(settings)
        overrides = dict(settings)
        if data is not None:
            if not isinstance(data, str | Path):
                raise ConfigError(
                    f"train() reads its data from a file or folder, not a {type(data).__name__}: write the "
                    "texts to a .txt file (one per line) or a .jsonl file and pass its path"
                )
            overrides["data"] = str(data)
        if isinstance(config, RunConfig):
            run_config = config.replace(**overrides)
        else:
            run_config = load_config(config, overrides)
            for line in run_config.recipe_notes:  # an axolotl/LLaMA-Factory recipe: how its keys were read
                print(line, flush=True)
        if config is not None:  # a config's own model/device/trust_remote_code would be ignored just the same
            named = {
                k: getattr(run_config, k) for k in LOADED_KEYS if k in run_config.given_keys - set(settings)
            }
            self._refuse_load_settings(
                named, "the RunConfig" if isinstance(config, RunConfig) else str(config)
            )
        run_config = run_config.replace(model=self.source.spec)
        # the precision this model is in (as loaded; fp32 after a full fine-tune or a merge) unless one is given;
        # a run's saved config.yaml says 'auto' when its loader chose, which must not re-choose on resume
        given = "precision" in settings or (
            "precision" in run_config.given_keys and run_config.precision != "auto"
        )
        precision = pick_precision(run_config.precision, self.device) if given else self.precision
        self.model, result = run_training(
            self.model,
            self.tokenizer,
            run_config,
            device=self.device,
            precision=precision,
            source=self.source,
            trust_remote_code=self.trust_remote_code,
            show_progress=show_progress,
            log=log.info if not show_progress else print,
            on_prepared=lambda model: setattr(self, "model", model),
        )
        self.precision = required_weight_dtype(run_config, precision)
        if result.tokenizer is not None:  # scratch with tokenizer: train brings its own
            self.tokenizer = result.tokenizer
        self.last_run = result
        return result

    def _refuse_load_settings(self, settings: dict, origin: str | None = None) -> None:
        """model, device and trust_remote_code are how this model was loaded: a run trains the model held here,
        so a different value given to train() (or set in its `origin` config) would be ignored; it is refused,
        naming what to do instead."""
        loaded = dict(zip(LOADED_KEYS, (self.source.spec, self.device, self.trust_remote_code), strict=True))
        for key, held in loaded.items():
            given = settings.get(key)
            if given is None or given == held or (key == "device" and given == "auto"):
                continue
            if key == "model" and self._is_loaded_model(str(given)):
                continue
            if key == "device" and _device_key(str(given)) == _device_key(str(held)):
                continue
            asked = f"train({key}={given!r})" if origin is None else f"{origin} sets {key}: {given!r}"
            dropped = "" if origin is None else f", or leave {key} out of {origin}"
            raise ConfigError(
                f"{asked}: this model was loaded with {key} {held!r}, and train() trains the model it holds; "
                f"load another with tf.load(..., {key}={given!r}) and train that{dropped}"
                if key != "model"
                else f"{asked}: train() trains the model this object holds ({held!r}); load the other one "
                f"with tf.load({given!r}) and call its train(){dropped}"
            )

    def _is_loaded_model(self, spec: str) -> bool:
        """The same model spelled another way: its folder with a trailing /, relative or absolute."""
        held = [Path(h).expanduser() for h in (self.source.spec, self.source.path)]
        given = Path(spec).expanduser()  # Path drops a trailing /
        return given in held or (
            given.exists() and any(h.exists() and h.resolve() == given.resolve() for h in held)
        )

    def prepared_for(self, config: RunConfig):
        """This model prepared for `config`'s method as a run would train it (quantized, cast, LoRA attached);
        used to measure a run before it starts (`tuneforge estimate --measure`).

        >>> LLM.load().prepared_for(load_config(None, {"method": "lora"}))
        """
        from tuneforge.models.preparation import prepare_base

        self.model = prepare_base(
            self.model,
            self.tokenizer,
            config,
            device=self.device,
            precision=pick_precision(config.precision, self.device),
            source=self.source,
            trust_remote_code=self.trust_remote_code,
        )
        return self.model

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path) -> Path:
        """Save the adapter (PEFT format) if one is attached, else the whole model and tokenizer."""
        path = Path(path)
        if is_peft(self.model):  # the active adapter, at the folder's root (as a run's <run>/adapter)
            save_active_adapter(self.model, path)
        else:
            save_pretrained(self.model, path)
            self.tokenizer.save_pretrained(path)
        return path

    def __repr__(self) -> str:
        adapter = " + LoRA adapter" if is_peft(self.model) else ""
        return f"LLM({self.source.spec!r}{adapter}, device={self.device!r}, precision={self.precision!r})"


def _device_key(device: str) -> tuple[str, str]:
    """('cuda', '0') for both 'cuda' and 'cuda:0': the device a model is on, however it is spelled."""
    kind, _, index = device.partition(":")
    return kind, index or "0"


load = LLM.load  # tf.load(...): the same signature and help
