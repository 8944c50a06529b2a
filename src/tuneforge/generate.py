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
from dataclasses import dataclass, field

from tuneforge.errors import TuneforgeError


class GenerationError(TuneforgeError, ValueError):
    """A generation setting is unknown or out of range."""


@dataclass
class GenerationSettings:
    """Sampling settings, named as in text-generation-webui's Parameters tab and HappyTransformer."""

    max_new_tokens: int = 40
    min_new_tokens: int = 0  # EOS is suppressed until this many tokens exist (HappyTransformer's min_length)
    do_sample: bool = True  # False: greedy (or beam search with num_beams > 1)
    temperature: float = 0.7
    top_k: int = 50  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability; 0 = off
    typical_p: float = 1.0  # locally typical sampling; 1.0 = off
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the text
    no_repeat_ngram_size: int = 0  # never repeat an n-gram of this size; 0 = off
    num_beams: int = 1
    early_stopping: bool = False  # beam search: stop once num_beams finished candidates exist
    stop: list[str] = field(default_factory=list)  # stop strings; the text ends before the first one
    bad_words: list[str] = field(default_factory=list)  # words never generated
    seed: int | None = 0  # None: a different draw each call
    chat: bool = False  # wrap the prompt in the model's chat template as a user message

    def validate(self) -> None:
        checks = [(self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
                  (0 <= self.min_new_tokens <= self.max_new_tokens, "min_new_tokens must be between 0 and "
                   "max_new_tokens"),
                  (self.temperature > 0 or not self.do_sample, "temperature must be above 0 when sampling; "
                   "use do_sample=False for greedy decoding"),
                  (self.top_k >= 0, "top_k must be 0 (off) or more"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
                  (0 < self.typical_p <= 1, "typical_p must be in (0, 1]"),
                  (self.repetition_penalty > 0, "repetition_penalty must be above 0"),
                  (self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be 0 (off) or more"),
                  (self.num_beams >= 1, "num_beams must be at least 1")]
        for ok, message in checks:
            if not ok:
                raise GenerationError(message)
        if isinstance(self.stop, str):  # a single string is a common slip for a one-item list
            self.stop = [self.stop]
        if any(not s for s in self.stop):
            raise GenerationError("stop strings must not be empty")


def resolve_settings(settings: GenerationSettings | None = None, **overrides) -> GenerationSettings:
    """A validated copy of `settings` with `overrides` applied (the caller's object is never changed)."""
    names = [f.name for f in dataclasses.fields(GenerationSettings)]
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known settings: {', '.join(names)}"
            raise GenerationError(f"unknown generation setting '{key}'{hint}")
    resolved = dataclasses.replace(settings or GenerationSettings(), **overrides)
    resolved.stop = list(resolved.stop) if not isinstance(resolved.stop, str) else [resolved.stop]
    resolved.validate()
    return resolved


def encode_prompt(tokenizer, prompt: str | list[dict], chat: bool) -> dict:
    """Token ids (and attention mask) for `prompt`; chat mode renders messages with the chat template."""
    if chat or isinstance(prompt, list):
        if not tokenizer.chat_template:
            raise GenerationError("this model's tokenizer has no chat template; generate without chat mode")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return dict(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True))
    return dict(tokenizer(prompt, return_tensors="pt"))


def _generate_kwargs(tokenizer, settings: GenerationSettings) -> dict:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                  num_beams=settings.num_beams, repetition_penalty=settings.repetition_penalty,
                  no_repeat_ngram_size=settings.no_repeat_ngram_size, pad_token_id=pad_id)
    if settings.min_new_tokens:
        kwargs["min_new_tokens"] = settings.min_new_tokens
    if settings.num_beams > 1:
        kwargs["early_stopping"] = settings.early_stopping
    if settings.stop:  # transformers stops on the tokens that complete a stop string; we cut the text below
        kwargs.update(stop_strings=settings.stop, tokenizer=tokenizer)
    if settings.bad_words:
        kwargs["bad_words_ids"] = [tokenizer(" " + w, add_special_tokens=False)["input_ids"]
                                   for w in settings.bad_words]
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                      min_p=settings.min_p or None, typical_p=settings.typical_p)
    else:  # greedy: silence sampling defaults a model's generation_config may carry
        kwargs.update(temperature=None, top_k=None, top_p=None)
    return kwargs


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` up to (not including) the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def _prepare(model, tokenizer, prompt, settings):
    import torch

    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in encode_prompt(tokenizer, prompt, settings.chat).items()}
    if settings.seed is not None:
        torch.manual_seed(settings.seed)  # seeds every device; sampling draws from the global generator
    return inputs, _generate_kwargs(tokenizer, settings)


def generate(model, tokenizer, prompt: str | list[dict], settings: GenerationSettings | None = None,
             **overrides) -> str:
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
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return cut_at_stop(text, settings.stop)[0]


def stream(model, tokenizer, prompt: str | list[dict], settings: GenerationSettings | None = None,
           **overrides) -> Iterator[str]:
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
    inputs = tokenizer(text, return_tensors="pt").to(device)
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].float()  # (vocab,)
    probs = torch.softmax(logits, dim=-1)
    values, indices = probs.topk(min(k, probs.shape[-1]))
    return [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, indices, strict=True)]
