"""Training from scratch: a new randomly initialised model from a size config, and optionally a new tokenizer.

    tokenizer = train_bpe_tokenizer(["some text ..."], vocab_size=4096)
    model = build_scratch_model("gpt2", tokenizer, n_layer=6, n_head=6, n_embd=384, n_positions=256, seed=0)

Sizes use GPT-2's names (seed 004's `GPT2Config(vocab_size, n_positions, n_embd, n_layer, n_head)`); for
`llama` they map to hidden_size/num_hidden_layers/num_attention_heads/max_position_embeddings.
"""

from __future__ import annotations

from tuneforge.errors import ConfigError

END_OF_TEXT = "<|endoftext|>"


def train_bpe_tokenizer(texts, vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on `texts` with the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=END_OF_TEXT,
        bos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
    )


def build_scratch_model(
    architecture: str, tokenizer, *, n_layer: int, n_head: int, n_embd: int, n_positions: int, seed: int
):
    """A freshly initialised causal LM sized by the GPT-2-style numbers, for `tokenizer`'s vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if n_embd % n_head:
        raise ConfigError(
            f"n_embd ({n_embd}) must be divisible by n_head ({n_head}); try n_embd: "
            f"{n_head * max(1, round(n_embd / n_head))}"
        )
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if architecture == "gpt2":
        config: GPT2Config | LlamaConfig = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=n_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            **special,
        )
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=n_embd,
            intermediate_size=4 * n_embd,
            num_hidden_layers=n_layer,
            num_attention_heads=n_head,
            num_key_value_heads=n_head,
            max_position_embeddings=n_positions,
            tie_word_embeddings=True,
            **special,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.requires_grad_(True)
    return model
