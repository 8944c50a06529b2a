"""Text generation and next-token probabilities on a loaded model (with or without an adapter).

    from tuneforge.generate import generate, next_token_probs
    text = generate(model, tokenizer, "To make a cheese sandwich ", max_new_tokens=30, seed=0)
    top = next_token_probs(model, tokenizer, "To be or not to", k=5)   # [(token, probability), ...]

The same prompt, settings and seed always give the same text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerationSettings:
    """Sampling settings, named as in text-generation-webui's Parameters tab and HappyTransformer."""

    max_new_tokens: int = 40
    do_sample: bool = True
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    seed: int | None = 0
    chat: bool = False  # wrap the prompt in the model's chat template as a user message


def _encode(tokenizer, prompt: str, chat: bool):
    if chat and tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)
    return tokenizer(prompt, return_tensors="pt")


def generate(model, tokenizer, prompt: str, settings: GenerationSettings | None = None, **overrides) -> str:
    """The continuation of `prompt` (the prompt itself is not repeated)."""
    import torch

    settings = settings or GenerationSettings()
    for key, value in overrides.items():
        if not hasattr(settings, key):
            raise TypeError(f"unknown generation setting '{key}'")
        setattr(settings, key, value)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in _encode(tokenizer, prompt, settings.chat).items()}
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                  num_beams=settings.num_beams, repetition_penalty=settings.repetition_penalty,
                  no_repeat_ngram_size=settings.no_repeat_ngram_size,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
    else:  # greedy: silence sampling defaults a model's generation_config may carry
        kwargs.update(temperature=None, top_k=None, top_p=None)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model.generate(**inputs, **kwargs)
    model.train(was_training)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new_tokens, skip_special_tokens=True)


def next_token_probs(model, tokenizer, text: str, k: int = 10) -> list[tuple[str, float]]:
    """The k most likely next tokens after `text`, with their probabilities (text-generation-webui's Logits tab)."""
    import torch

    device = next(model.parameters()).device
    inputs = tokenizer(text, return_tensors="pt").to(device)
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].float()  # (vocab,)
    probs = torch.softmax(logits, dim=-1)
    values, indices = probs.topk(k)
    return [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, indices, strict=True)]
