"""Generation settings, stop strings, streaming and chat mode on the tiny random model."""

import pytest

from tuneforge.generate import GenerationError, GenerationSettings, encode_prompt, resolve_settings

PROMPT = "you can make a"


def test_same_seed_and_settings_give_the_same_text_and_another_seed_another(tiny_llm):
    settings = dict(max_new_tokens=12, temperature=1.0, top_k=0, min_p=0.01, typical_p=0.95)
    first = tiny_llm.generate(PROMPT, seed=3, **settings)
    assert tiny_llm.generate(PROMPT, seed=3, **settings) == first
    assert any(tiny_llm.generate(PROMPT, seed=s, **settings) != first for s in (4, 5, 6))


def test_a_stop_string_ends_the_text_before_it(tiny_llm):
    full = tiny_llm.generate(PROMPT, do_sample=False, max_new_tokens=20)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    cut = tiny_llm.generate(PROMPT, do_sample=False, max_new_tokens=20, stop=[stop])
    assert cut == full[: full.index(stop)]
    assert stop not in cut


@pytest.mark.parametrize("stop", [None, "mid"])
def test_streaming_yields_exactly_the_non_streamed_text(tiny_llm, stop):
    settings = GenerationSettings(max_new_tokens=16, temperature=1.0, seed=11)
    whole = tiny_llm.generate(PROMPT, settings)
    if stop:  # a stop string that really occurs in the text
        stop = whole[len(whole) // 2 : len(whole) // 2 + 2]
        whole = tiny_llm.generate(PROMPT, settings, stop=[stop])
    pieces = list(tiny_llm.stream(PROMPT, settings, stop=[stop] if stop else []))
    assert len(pieces) > 1
    assert "".join(pieces) == whole


def test_beam_search_with_early_stopping_is_deterministic(tiny_llm):
    settings = dict(do_sample=False, num_beams=3, early_stopping=True, max_new_tokens=8)
    assert tiny_llm.generate(PROMPT, **settings) == tiny_llm.generate(PROMPT, **settings)


def test_chat_mode_wraps_the_prompt_in_the_chat_template(tokenizer):
    ids = encode_prompt(tokenizer, "Hello", chat=True)["input_ids"][0]
    text = tokenizer.decode(ids)
    assert "<|im_start|>user" in text and "Hello" in text and text.rstrip().endswith("assistant")
    assert (
        encode_prompt(tokenizer, "Hello", chat=False)["input_ids"][0].tolist()
        == tokenizer("Hello")["input_ids"]
    )


def test_min_new_tokens_and_max_new_tokens_bound_the_length(tiny_llm):
    text = tiny_llm.generate(PROMPT, do_sample=False, min_new_tokens=5, max_new_tokens=5)
    assert len(tiny_llm.tokenizer(text, add_special_tokens=False)["input_ids"]) in (4, 5, 6)  # re-tokenizing


def test_unknown_or_out_of_range_settings_are_one_clear_error():
    with pytest.raises(GenerationError, match="did you mean 'temperature'"):
        resolve_settings(temprature=0.5)
    with pytest.raises(GenerationError, match="top_p"):
        resolve_settings(top_p=1.5)
    with pytest.raises(GenerationError, match=r"do_sample false \(--greedy on the command line\)"):
        resolve_settings(temperature=0)  # sampling at temperature 0: the error names the greedy way


def test_overrides_never_change_the_callers_settings():
    settings = GenerationSettings(temperature=0.5)
    assert resolve_settings(settings, temperature=0.9).temperature == 0.9
    assert settings.temperature == 0.5


def test_next_token_probabilities_are_sorted_and_sum_below_one(tiny_llm):
    top = tiny_llm.next_token_probs("To be or not to", k=5)
    probabilities = [p for _, p in top]
    assert len(top) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0 + 1e-6


def test_an_empty_text_starts_from_the_start_token_instead_of_failing(tiny_llm):
    """The Notebook's and Logits' empty page: "cannot reshape tensor of 0 elements" from inside the model."""
    start = tiny_llm.tokenizer.bos_token or tiny_llm.tokenizer.eos_token
    generated = tiny_llm.generate("", max_new_tokens=4, do_sample=False)
    assert generated == tiny_llm.generate(start, max_new_tokens=4, do_sample=False)
    assert "".join(tiny_llm.stream("", max_new_tokens=4, do_sample=False)) == generated
    assert tiny_llm.next_token_probs("", k=3) == tiny_llm.next_token_probs(start, k=3)
