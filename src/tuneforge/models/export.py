"""Merge an adapter into its base and export models: a Hugging Face safetensors folder, or one GGUF file.

    from tuneforge.models.export import merge_adapter, export_gguf, verify_gguf
    merge_adapter("default", "runs/demo/adapter", "merged/")           # plain transformers loads merged/
    export_gguf(model, tokenizer, "model.gguf")                          # llama, mistral or qwen2, f16 weights
    print(verify_gguf(model, tokenizer, "model.gguf").agreement)         # top-1 next tokens, loaded back

The GGUF writer follows llama.cpp's convert_hf_to_gguf.py for llama, mistral and qwen2 models: tensor names from
the `gguf` package's TensorNameMap, llama's q/k projections permuted to GGML's rotary layout, 2-D weights in f16 (or
f32) and norms in f32, no output.weight when embeddings are tied, and the tokenizer, special token ids, whether BOS/EOS
are added, and the chat template in the metadata. A byte-level BPE tokenizer is written as GPT-2's (tokens, types,
merges) with the llama.cpp pre-tokenizer name that splits text as the tokenizer does (llama_cpp_pre_tokenizer); a
SentencePiece BPE one (Llama 2, TinyLlama, Mistral) as llama.cpp's "llama" vocabulary with scores
(gguf_sentencepiece.py).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.errors import ModelError
from tuneforge.models.gguf_sentencepiece import is_sentencepiece_bpe, sentencepiece_vocab, tokenizer_json
from tuneforge.models.kind import is_peft, is_quantized
from tuneforge.models.saving import save_pretrained

log = logging.getLogger(__name__)

# model_type -> (llama.cpp's architecture, whether q/k are permuted to its rotary layout), as convert_hf_to_gguf.py
# writes them: Qwen2 keeps HF's rotate-half layout (and its q/k/v biases); Mistral is a llama to llama.cpp
GGUF_ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}

# llama.cpp does not run a tokenizer's own pre-tokenizer: it picks a fixed list of split regexes by the name in
# tokenizer.ggml.pre (src/llama-vocab.cpp), and a name it does not know fails the load. Each name below is the one
# whose regexes split text as these tokenizer.json pre-tokenizers do (tests/unit/models/test_gguf_pre_tokenizer.py
# checks the splits). "default" (what transformers' own reader needs no name for) splits punctuation runs and
# 3-digit groups apart, so SmolLM2 exported with it tokenized numbers and code differently in llama.cpp.
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

# Prompts for the GGUF self-check: varied registers, short enough to run in seconds on a CPU.
VERIFY_PROMPTS = [
    "To be or not to",
    "To make a cheese sandwich ",
    "The capital of France is",
    "Once upon a time,",
    "def fibonacci(n):",
    "The quick brown fox",
    "1, 2, 3, 4,",
    "In 1492, Columbus",
    "Water boils at",
    "The meaning of life is",
    "import numpy as",
    "My favourite colour is",
    "The sun rises in the",
    "Shakespeare wrote",
    "Dear Sir or Madam,",
    "The theory of relativity",
    "She opened the door and",
    "A healthy breakfast includes",
    "The best way to learn",
    "Hello, how are",
]


def save_folder(model, tokenizer, path: str | Path) -> Path:
    """Write a plain model (no adapter) and its tokenizer as a Hugging Face safetensors folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ModelError(f"'{path}' is a file; give a folder to write the model to")
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").is_file():
        raise ModelError(
            f"'{path}' already holds files that are not a model (a run folder?); give a new or empty folder, "
            "or an earlier merged model's folder to replace it"
        )
    save_pretrained(model, path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def merged_copy(peft_model, source_path: str, trust_remote_code: bool = False):
    """The adapter merged into a fresh fp32 base read from `source_path`.

    Used when the in-memory base is 4/8-bit (QLoRA): merging into quantized weights would round the update
    away, so the base is reloaded in full precision. The adapter was trained against the quantized base, so
    the merged model's outputs differ slightly from the QLoRA model's.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    warnings.warn(
        "the adapter was trained on a quantized base; merging it into the full-precision base "
        "changes outputs slightly (the base weights are no longer rounded)",
        stacklevel=2,
    )
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(peft_model, folder, selected_adapters=[peft_model.active_adapter])
        adapter_dir = (
            Path(folder) / peft_model.active_adapter
            if peft_model.active_adapter != "default"
            else Path(folder)
        )
        base = AutoModelForCausalLM.from_pretrained(
            source_path, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()


def merge_adapter(
    base: str, adapter: str | Path, output: str | Path, *, device: str = "cpu", precision: str = "fp32"
) -> Path:
    """Load `base` + `adapter`, merge the adapter into the weights and save one plain model folder."""
    from tuneforge.models.adapters import load_adapter
    from tuneforge.models.loading import load_model

    model, tokenizer, _ = load_model(base, device=device, precision=precision)
    merged = load_adapter(model, adapter).merge_and_unload()
    return save_folder(merged, tokenizer, output)


# ---------------------------------------------------------------------------------------------- GGUF
def _permute(weights, n_head: int, n_head_kv: int | None):
    """llama.cpp's q/k reordering: HF's rotate-half layout to GGML's interleaved rotary pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings by id and their GGUF types (special added tokens are CONTROL), as llama.cpp writes them,
    padded to the model's `vocab_size` (llama.cpp takes the embedding's row count from the token list)."""
    import gguf

    vocab = tokenizer.get_vocab()
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    size = max(vocab_size, max(by_id) + 1)
    tokens: list[str] = []
    types: list[int] = []  # gguf.TokenType is an IntEnum
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _adds_bos_and_eos(tokenizer) -> dict[str, bool]:
    """Whether the tokenizer puts BOS in front of a text and EOS after it, as measured, for tokenizer.ggml.add_*:
    llama.cpp otherwise adds BOS by its own default for the vocabulary type (always, for SentencePiece)."""
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return {"bos": bos is not None and ids[:1] == [bos], "eos": eos is not None and ids[-1:] == [eos]}


def _describe_pre_tokenizer(tokenizer_json: dict) -> tuple:
    """A tokenizer.json reduced to what decides where it splits text: normalizer, pre-tokenizer steps, and
    whether its BPE ignores merges for whole words in the vocabulary (llama.cpp's llama-bpe does)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre] if pre else []
    shape: list[tuple] = [("normalizer", (tokenizer_json.get("normalizer") or {}).get("type"))]
    for part in parts or []:
        kind = part.get("type")
        if kind == "ByteLevel":
            shape.append(("ByteLevel", part.get("use_regex", True), part.get("add_prefix_space", True)))
        elif kind == "Digits":
            shape.append(("Digits", part.get("individual_digits", False)))
        elif kind == "Split":
            pattern = part.get("pattern") or {}
            shape.append(("Split", pattern.get("Regex"), part.get("behavior"), part.get("invert", False)))
        else:
            shape.append((kind,))
    shape.append(("ignore_merges", bool((tokenizer_json.get("model") or {}).get("ignore_merges", False))))
    return tuple(shape)


def _shape(normalizer, *steps, ignore_merges=False) -> tuple:
    return (("normalizer", normalizer), *steps, ("ignore_merges", ignore_merges))


GPT2_BYTES = ("ByteLevel", True, False)  # GPT-2's regex, no space added in front
PLAIN_BYTES = ("ByteLevel", False, False)  # bytes only: a Split before it did the splitting
# tokenizer.json shape -> llama.cpp's name for the same splits. Qwen2's NFC normalizer: llama.cpp's converter
# writes "qwen2" for it all the same (text is NFC already in practice).
LLAMA_CPP_PRE_TOKENIZERS = {
    _shape(None, GPT2_BYTES): "gpt-2",
    _shape(None, ("Digits", True), GPT2_BYTES): "smollm",  # SmolLM/SmolLM2: every digit apart first
    _shape(None, ("Split", QWEN2_SPLIT, "Isolated", False), PLAIN_BYTES): "qwen2",
    _shape("NFC", ("Split", QWEN2_SPLIT, "Isolated", False), PLAIN_BYTES): "qwen2",
    _shape(None, ("Split", LLAMA3_SPLIT, "Isolated", False), PLAIN_BYTES, ignore_merges=True): "llama-bpe",
    # Llama 3 files saved without ignore_merges (older copies, fine-tunes): llama.cpp's converter names them
    # llama-bpe too; the two differ only for a word in the vocabulary that the merges would not build
    _shape(None, ("Split", LLAMA3_SPLIT, "Isolated", False), PLAIN_BYTES): "llama-bpe",
}


def llama_cpp_pre_tokenizer(tokenizer) -> str | None:
    """llama.cpp's tokenizer.ggml.pre for this tokenizer, or None when it has none that splits text the same."""
    described = tokenizer_json(tokenizer)
    return LLAMA_CPP_PRE_TOKENIZERS.get(_describe_pre_tokenizer(described)) if described else None


def export_gguf(model, tokenizer, path: str | Path, *, dtype: str = "f16", name: str | None = None) -> Path:
    """Write a plain llama, mistral or qwen2 model and its BPE tokenizer (byte-level or SentencePiece) to one
    GGUF file."""
    import gguf
    import numpy as np

    if Path(path).is_dir():
        raise ModelError(
            f"'{path}' is a folder; give the GGUF file to write, e.g. {Path(path) / 'model.gguf'}"
        )
    config = model.config
    if config.model_type not in GGUF_ARCHITECTURES:
        raise ModelError(
            f"GGUF export supports {', '.join(GGUF_ARCHITECTURES)} models; this one is '{config.model_type}'"
        )
    arch, permuted = GGUF_ARCHITECTURES[config.model_type]
    if is_peft(model):
        raise ModelError("merge the adapter before exporting (tuneforge merge, or LLM.merge())")
    if is_quantized(model):
        raise ModelError(
            "the model is loaded in 4/8-bit; load it with precision fp32 (or merge it) to export"
        )
    if dtype not in ("f16", "f32"):
        raise ModelError(f"GGUF dtype '{dtype}' is not supported; use f16 or f32")
    if tokenizer.backend_tokenizer.model.__class__.__name__ != "BPE":
        raise ModelError(
            "GGUF export writes BPE tokenizers (byte-level as GPT-2's, or SentencePiece BPE as Llama 2's); "
            f"this one is {tokenizer.backend_tokenizer.model.__class__.__name__}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_layers, n_head = config.num_hidden_layers, config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name or Path(str(getattr(config, "name_or_path", "") or "model")).name)
    writer.add_block_count(n_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    rope_theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get(
        "rope_theta", 10000.0
    )
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // n_head:  # llama.cpp assumes hidden size / heads unless told
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)

    tokens, types = _vocab(tokenizer, config.vocab_size)
    described = tokenizer_json(tokenizer)
    pieces = (
        sentencepiece_vocab(described, tokens, types, tokenizer.unk_token_id)
        if described is not None and is_sentencepiece_bpe(described)
        else None
    )
    if pieces is not None:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")  # SentencePiece splits nothing before merging
        writer.add_token_scores(pieces.scores)
        writer.add_add_space_prefix(pieces.add_space_prefix)
        types = pieces.types
    else:
        writer.add_tokenizer_model("gpt2")
        pre = llama_cpp_pre_tokenizer(tokenizer)
        if pre is None:
            warnings.warn(
                "this tokenizer splits text in a way llama.cpp has no pre-tokenizer name for: the GGUF loads in "
                "transformers as it is, but llama.cpp (and Ollama) will split text with their default rules, "
                "so some words, numbers or code may be tokenized differently than in training",
                stacklevel=2,
            )
        writer.add_tokenizer_pre(pre or "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:  # SpecialVocab reads merges, special ids and chat template
        tokenizer.save_pretrained(folder)
        # llama.cpp merges a SentencePiece vocabulary by score; transformers' reader derives the merges back
        special = gguf.SpecialVocab(folder, load_merges=pieces is None, n_vocab=len(tokens))
        special.add_special_token.update(_adds_bos_and_eos(tokenizer))
        special.add_to_gguf(writer, quiet=True)

    names = gguf.TensorNameMap(gguf.MODEL_ARCH[arch.upper()], n_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp (and transformers' GGUF reader) tie the output to token_embd
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelError(f"no GGUF name for tensor '{hf_name}'")
        data = tensor.detach().float().cpu().numpy()
        if permuted and hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head, n_head)
        elif permuted and hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_head, n_kv)
        data = data.astype(np.float16 if dtype == "f16" and data.ndim == 2 else np.float32)
        writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@dataclass
class GgufCheck:
    """How the GGUF file, loaded back with transformers, agrees with the model it came from."""

    agreement: float  # fraction of prompts with the same top-1 next token
    max_logit_difference: float
    mismatches: list[str] = field(default_factory=list)
    chat_template_kept: bool = False
    eos_kept: bool = False

    @property
    def ok(self) -> bool:
        return self.agreement == 1.0 and self.chat_template_kept and self.eos_kept


def verify_gguf(model, tokenizer, path: str | Path, prompts: list[str] | None = None) -> GgufCheck:
    """Load `path` back with plain transformers (dequantized) and compare next-token logits on `prompts`.

    The tokenizer read back gets the split its tokenizer.ggml.pre names where transformers' reader drops it
    (as tuneforge's loader and llama.cpp both apply it), so whitespace before a digit is no false alarm."""
    import json

    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from tuneforge.models.loading import apply_gguf_tokenizer_settings, gguf_pre_tokenizer_name

    path = Path(path)
    loaded_tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer_json = json.loads(loaded_tokenizer.backend_tokenizer.to_str())
    if apply_gguf_tokenizer_settings(tokenizer_json, gguf_pre_tokenizer_name(path)):
        loaded_tokenizer._tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json))
    loaded = AutoModelForCausalLM.from_pretrained(
        str(path.parent),
        gguf_file=path.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    ).eval()
    device = next(model.parameters()).device
    same, worst, mismatches = 0, 0.0, []
    prompts = prompts or VERIFY_PROMPTS
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            if loaded_tokenizer(prompt, return_tensors="pt")["input_ids"].tolist() != ids.tolist():
                mismatches.append(f"{prompt!r}: tokenized differently")
                continue
            expected = model(input_ids=ids.to(device)).logits[0, -1].float().cpu()
            actual = loaded(input_ids=ids).logits[0, -1].float()
            worst = max(worst, float((expected - actual).abs().max()))
            if int(expected.argmax()) == int(actual.argmax()):
                same += 1
            else:
                mismatches.append(
                    f"{prompt!r}: top-1 {tokenizer.decode(int(expected.argmax()))!r} became "
                    f"{tokenizer.decode(int(actual.argmax()))!r}"
                )
    return GgufCheck(
        same / len(prompts),
        worst,
        mismatches,
        chat_template_kept=loaded_tokenizer.chat_template == tokenizer.chat_template,
        eos_kept=loaded_tokenizer.eos_token == tokenizer.eos_token,
    )
