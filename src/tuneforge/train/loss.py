"""The training loss of a batch: summed next-token cross-entropy over positions that carry a label.

    loss_sum = batch_loss_sum(model, batch)          # divide by the batch's loss-token count for the mean

Where the model's output layer is a plain linear head (llama, mistral, qwen, gpt2, ...), we run the decoder,
keep only the hidden states of positions whose next token carries loss, and apply the head + cross-entropy to
those in chunks. So padding and masked prompt tokens never get full-vocabulary logits, and the fp32 logits of a
whole batch (batch x seq x vocab) are never materialised at once — Liger's/TRL's "chunked NLL" idea, written
with plain torch because it is 30 lines and needs no fused kernel to pay off on a CPU.
"""

from __future__ import annotations

from tuneforge.data.tokenization import IGNORE_INDEX

# Model types whose logits are exactly lm_head(last hidden state): no softcapping or logit scaling.
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neo", "gpt_neox", "phi", "phi3", "olmo",
                     "olmo2", "smollm3", "starcoder2"}
CHUNK_TOKENS = 1024  # positions per head+loss chunk: (1024 x 49152) fp32 logits = 200 MB at most


def token_loss_sum(logits, labels):
    """Summed next-token cross-entropy (fp32) over positions whose label is not IGNORE_INDEX."""
    import torch.nn.functional as F

    vocab = logits.shape[-1]
    shifted_logits = logits[:, :-1, :].reshape(-1, vocab).float()  # (batch * (seq-1), vocab)
    shifted_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")


def count_loss_tokens(labels) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def example_loss_tokens(example: dict) -> int:
    """count_loss_tokens for one uncollated example (the first label is never predicted)."""
    return sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)


def model_inputs(batch) -> dict:
    if "position_ids" in batch:
        # Packed: transformers builds a block-diagonal causal mask from position_ids that restart at 0, but only
        # with no attention_mask and the KV cache off (with use_cache=True examples would attend to each other).
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def forward_logits(model, batch):
    """Full logits for a collated batch (evaluation, generation checks)."""
    return model(**model_inputs(batch)).logits


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_direct_head(model) -> bool:
    base = _causal_lm(model)
    return getattr(base.config, "model_type", None) in PLAIN_HEAD_MODELS and base.get_output_embeddings() is not None


def _head_loss(lm_head, hidden, targets):
    import torch.nn.functional as F

    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def batch_loss_sum(model, batch, direct: bool = True):
    """Summed loss over the batch's label-carrying positions (see the module docstring)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    if not (direct and supports_direct_head(model)):
        return token_loss_sum(forward_logits(model, batch), batch["labels"])
    base = _causal_lm(model)
    hidden = base.base_model(**model_inputs(batch)).last_hidden_state  # (batch, seq, hidden)
    mask = batch["labels"][:, 1:] != IGNORE_INDEX  # position t predicts label t+1
    selected = hidden[:, :-1][mask]  # (tokens, hidden)
    targets = batch["labels"][:, 1:][mask]
    lm_head = base.get_output_embeddings()  # LoRA / modules_to_save wrappers on the head still apply
    if selected.shape[0] <= CHUNK_TOKENS:
        return _head_loss(lm_head, selected, targets)
    total = torch.zeros((), device=hidden.device, dtype=torch.float32)
    for start in range(0, selected.shape[0], CHUNK_TOKENS):
        piece = slice(start, start + CHUNK_TOKENS)
        # recomputing a chunk's head in the backward pass keeps one chunk of logits alive, not all of them
        total = total + checkpoint(_head_loss, lm_head, selected[piece], targets[piece], use_reentrant=False)
    return total
