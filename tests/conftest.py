"""Shared fixtures: a tiny randomly initialised llama model with the default tokenizer, built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# ../shared/data beside the repository; TUNEFORGE_SHARED_DATA where it lies elsewhere (a GPU machine: gpu_check.sh)
SHARED_DATA = Path(
    os.environ.get("TUNEFORGE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
# a 2-layer, 32-wide decoder in llama's key names (most model types' configs take them too)
TINY_SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def save_tiny_model(model_type: str, folder: Path, tokenizer, **settings) -> Path:
    """A tiny randomly initialised model of `model_type` (TINY_SIZES, the default tokenizer) saved to `folder`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type,
        **{"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **TINY_SIZES, **settings},
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentencepiece_tokenizer(text: str, size: int = 1200):
    """A Llama 2 style tokenizer built offline as transformers builds one from a SentencePiece BPE model: <unk>,
    <s>, </s>, 256 byte pieces, then pieces in the order they were learnt (here by the `tokenizers` trainer on
    `text`), with merges derived from that order (generate_merges, as its converter does from the scores)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace()
    learner.train_from_iterator(text.splitlines(), trainers.BpeTrainer(vocab_size=size, show_progress=False))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece, _ in sorted(learner.get_vocab().items(), key=lambda item: item[1]):
        vocab.setdefault(piece, len(vocab))
    scores = {piece: -float(i) for piece, i in vocab.items()}
    return LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab, scores))


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The real default model, converted once into the tuneforge cache."""
    from tuneforge.models.loading import default_checkpoint

    return default_checkpoint()


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from tuneforge.models.loading import ModelSource, load_tokenizer

    return load_tokenizer(ModelSource("default", str(default_model_dir)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 32-wide llama with the default tokenizer (~1.6M parameters, mostly embeddings)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **TINY_SIZES,
        tie_word_embeddings=True,
        initializer_range=0.1,  # large enough for LoRA to move it
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def lines_file(tmp_path) -> Path:
    from tuneforge.data.spintax import expand

    path = tmp_path / "lines.txt"
    path.write_text(
        "\n".join(
            expand(
                "{you can|anyone can} {make|build} a {small|tasty} {cheese|ham} sandwich "
                "{quickly|slowly|today}",
                24,
                seed=1,
            )
        )
        + "\n"
    )
    return path


@pytest.fixture()
def tiny_llm(tiny_model_dir):
    import tuneforge as tf

    return tf.load(str(tiny_model_dir), precision="fp32", device="cpu")
