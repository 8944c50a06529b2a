"""Text generation (whole or streamed token by token) and next-token probabilities on a loaded model.

    from tuneforge.generate import generate, next_token_probs, stream
    text = generate(model, tokenizer, "To make a cheese sandwich ", max_new_tokens=30, seed=0, stop=["\\n"])
    for piece in stream(model, tokenizer, "To make a cheese sandwich ", seed=0):
        print(piece, end="", flush=True)
    top = next_token_probs(model, tokenizer, "To be or not to", k=5)   # [(token, probability), ...]

The same prompt, settings and seed always give the same text, and streaming gives exactly the text that
`generate` returns. Settings are named as in text-generation-webui's Parameters tab (and HappyTransformer).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator
from dataclasses import dataclass

from tuneforge.config import setting, validate_fields
from tuneforge.errors import TuneforgeError


class GenerationError(TuneforgeError, ValueError):
    """A generation setting is unknown or out of range."""


@dataclass
class GenerationSettings:
    """Sampling settings, named as in text-generation-webui's Parameters tab and HappyTransformer.

    Each field carries its help text and range (config.setting): the CLI builds its flags and the web UI its
    sliders from them, and `validate` checks them, so a setting is declared here once.
    """

    max_new_tokens: int = setting(40, "Most tokens to generate.", min=1, max=32_768, group="generation")
    min_new_tokens: int = setting(
        0,
        "Fewest tokens before the model may stop (the end-of-text token is held back until then).",
        min=0,
        group="generation",
    )
    do_sample: bool = setting(
        True,
        "Sample the next token; off: greedy decoding (or beam search with num_beams > 1).",
        group="generation",
    )
    temperature: float = setting(
        0.7,
        "Sampling temperature: higher is more random, lower more predictable.",
        min=0.0,
        max=5.0,
        group="generation",
    )
    top_k: int = setting(
        50, "Sample from the k most likely tokens (0 = off).", min=0, max=1000, group="generation"
    )
    top_p: float = setting(
        1.0,
        "Sample from the smallest set of tokens whose probability adds up to p (1.0 = off).",
        min=0.0,
        max=1.0,
        min_exclusive=True,
        group="generation",
    )
    min_p: float = setting(
        0.0,
        "Drop tokens less likely than min_p times the most likely one (0 = off).",
        min=0.0,
        max=0.99,
        group="generation",
    )
    typical_p: float = setting(
        1.0,
        "Locally typical sampling: the probability mass kept (1.0 = off).",
        min=0.0,
        max=1.0,
        min_exclusive=True,
        group="generation",
    )
    repetition_penalty: float = setting(
        1.0,
        "Penalise tokens already in the text (> 1 discourages repeats; 1.0 = off).",
        min=0.0,
        max=3.0,
        min_exclusive=True,
        group="generation",
    )
    no_repeat_ngram_size: int = setting(
        0, "Never repeat an n-gram of this many tokens (0 = off).", min=0, max=20, group="generation"
    )
    num_beams: int = setting(1, "Beam search width (1 = no beam search).", min=1, max=20, group="generation")
    early_stopping: bool = setting(
        False, "Beam search: stop once num_beams candidates are finished.", group="generation"
    )
    stop: list[str] = setting(
        [],
        "Stop before this string; repeat for several. Escapes like \\n are understood on the command line.",
        group="generation",
        repeatable=True,
    )
    bad_words: list[str] = setting(
        [], "A word never to generate; repeat for several.", group="generation", repeatable=True
    )
    seed: int | None = setting(
        0,
        "Sampling seed: same seed, same text ('none': a different draw each call).",
        min=0,
        group="generation",
    )
    chat: bool = setting(
        False, "Wrap the prompt in the model's chat template as a user message.", group="generation"
    )

    def validate(self) -> None:
        """Coerce each setting to its type and check its range; raise GenerationError naming the setting."""
        for name in ("stop", "bad_words"):  # a single string is a common slip for a one-item list
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        validate_fields(self, GenerationError)
        if self.min_new_tokens > self.max_new_tokens:
            raise GenerationError(
                f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens "
                f"({self.max_new_tokens})"
            )
        if self.do_sample and self.temperature <= 0:
            raise GenerationError(
                "temperature must be above 0 when sampling; for greedy decoding (always the most likely "
                "token) turn sampling off instead: do_sample false (--greedy on the command line)"
            )
        if any(not s for s in self.stop):
            raise GenerationError("stop strings must not be empty")


def generation_settings_help() -> dict[str, dataclasses.Field]:
    """Each generation setting's field, whose metadata holds help, min, max and choices (for CLI and UI)."""
    return {f.name: f for f in dataclasses.fields(GenerationSettings)}


def resolve_settings(settings: GenerationSettings | None = None, **overrides) -> GenerationSettings:
    """A validated copy of `settings` with `overrides` applied (the caller's object is never changed)."""
    names = [f.name for f in dataclasses.fields(GenerationSettings)]
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known settings: {', '.join(names)}"
            raise GenerationError(f"unknown generation setting '{key}'{hint}")
    resolved = dataclasses.replace(settings or GenerationSettings(), **overrides)
    for name in ("stop", "bad_words"):  # copies, never the caller's lists; a lone string is one item
        items = getattr(resolved, name)
        setattr(resolved, name, [items] if isinstance(items, str) else list(items))
    resolved.validate()
    return resolved


def encode_prompt(tokenizer, prompt: str | list[dict], chat: bool) -> dict:
    """Token ids (and attention mask) for `prompt`; chat mode renders messages with the chat template."""
    if not isinstance(prompt, str) and not (
        isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt)
    ):
        raise GenerationError(
            f"the prompt must be a string, or chat messages [{{'role': 'user', 'content': ...}}], "
            f"not {type(prompt).__name__}"
        )
    if chat or isinstance(prompt, list):
        if not tokenizer.chat_template:
            raise GenerationError("this model's tokenizer has no chat template; generate without chat mode")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return dict(
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        )
    return text_inputs(tokenizer, prompt)


def text_inputs(tokenizer, text: str) -> dict:
    """Token ids and attention mask of `text`; an empty text starts from the start-of-text token (as HF's
    generate does without input, and text-generation-webui's Notebook from an empty page) rather than
    failing inside the model on zero tokens."""
    import torch

    inputs = dict(tokenizer(text, return_tensors="pt"))
    if inputs["input_ids"].shape[1] == 0:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise GenerationError("give some text: this model's tokenizer has no start token to begin from")
        inputs = {"input_ids": torch.tensor([[start]]), "attention_mask": torch.ones(1, 1, dtype=torch.long)}
    return inputs


def _generate_kwargs(tokenizer, settings: GenerationSettings) -> dict:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = dict(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        num_beams=settings.num_beams,
        repetition_penalty=settings.repetition_penalty,
        no_repeat_ngram_size=settings.no_repeat_ngram_size,
        pad_token_id=pad_id,
    )
    if settings.min_new_tokens:
        kwargs["min_new_tokens"] = settings.min_new_tokens
    if settings.num_beams > 1:
        kwargs["early_stopping"] = settings.early_stopping
    if settings.stop:  # transformers stops on the tokens that complete a stop string; we cut the text below
        kwargs.update(stop_strings=settings.stop, tokenizer=tokenizer)
    if settings.bad_words:
        kwargs["bad_words_ids"] = [
            tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in settings.bad_words
        ]
    if settings.do_sample:
        kwargs.update(
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            min_p=settings.min_p or None,
            typical_p=settings.typical_p,
        )
    else:  # greedy: silence sampling defaults a model's generation_config may carry
        kwargs.update(temperature=None, top_k=None, top_p=None)
    return kwargs


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` up to (not including) the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _prepare(model, tokenizer, prompt, settings):
    import torch

    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in encode_prompt(tokenizer, prompt, settings.chat).items()}
    if settings.seed is not None:
        torch.manual_seed(settings.seed)  # seeds every device; sampling draws from the global generator
    return inputs, _generate_kwargs(tokenizer, settings)


def generate(
    model, tokenizer, prompt: str | list[dict], settings: GenerationSettings | None = None, **overrides
) -> str:
    """The continuation of `prompt` (the prompt itself is not repeated), cut before any stop string."""
    import torch

    settings = resolve_settings(settings, **overrides)
    inputs, kwargs = _prepare(model, tokenizer, prompt, settings)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model.generate(**inputs, **kwargs)
    finally:
        model.train(was_training)
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return cut_at_stop(text, settings.stop)[0]


def stream(
    model, tokenizer, prompt: str | list[dict], settings: GenerationSettings | None = None, **overrides
) -> Iterator[str]:
    """Yield the continuation piece by piece as tokens are generated; the pieces join to `generate`'s text.

    Generation runs in a worker thread feeding transformers' TextIteratorStreamer. With stop strings, the
    last few characters are held back until it is clear they do not begin a stop string.
    """
    import threading

    import torch
    from transformers import TextIteratorStreamer

    settings = resolve_settings(settings, **overrides)
    if settings.num_beams > 1:
        raise GenerationError("streaming works token by token and cannot follow beam search; use num_beams=1")
    inputs, kwargs = _prepare(model, tokenizer, prompt, settings)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    error: list[BaseException] = []

    def work():
        try:
            with torch.no_grad():
                model.generate(**inputs, **kwargs, streamer=streamer)
        except BaseException as exc:  # re-raised in the caller's thread below
            error.append(exc)
            streamer.end()

    was_training = model.training
    model.eval()
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    hold = max((len(s) for s in settings.stop), default=1) - 1  # characters that might start a stop string
    text, sent, stopped = "", 0, False
    try:
        for piece in streamer:
            if stopped:
                continue  # drain, so the worker finishes
            text += piece
            cut, stopped = cut_at_stop(text, settings.stop)
            safe = len(cut) if stopped else max(sent, len(text) - hold)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if not stopped and sent < len(text):
            yield text[sent:]
    finally:
        worker.join()
        model.train(was_training)
    if error:
        raise error[0]


def next_token_probs(model, tokenizer, text: str, k: int = 10) -> list[tuple[str, float]]:
    """The k most likely next tokens after `text`, with their probabilities (text-generation-webui's Logits tab)."""
    import torch

    if k < 1:
        raise GenerationError("k (how many next tokens to show) must be at least 1")
    device = next(model.parameters()).device
    inputs = {name: tensor.to(device) for name, tensor in text_inputs(tokenizer, text).items()}
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].float()  # (vocab,)
    probs = torch.softmax(logits, dim=-1)
    values, indices = probs.topk(min(k, probs.shape[-1]))
    return [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, indices, strict=True)]
