"""The training loss of a batch: summed next-token cross-entropy over positions that carry a label.

    loss_sum = batch_loss_sum(model, batch)          # divide by the batch's loss-token count for the mean
    mean = evaluate_loss(model, examples, micro_batch_size=4, pad_token_id=0, device="cpu")   # no gradient

Where the model's output layer is a plain linear head (llama, mistral, qwen, gpt2, ...), we run the decoder,
keep only the hidden states of positions whose next token carries loss, and apply the head + cross-entropy to
those in chunks. So padding and masked prompt tokens never get full-vocabulary logits, and the fp32 logits of a
whole batch (batch x seq x vocab) are never materialised at once — Liger's "fused linear cross-entropy": each
chunk's gradients are computed right away in the forward pass, so nothing of the size of the logits is kept for
the backward pass and nothing is recomputed. Written with plain torch (Liger's kernels are Triton, GPU-only);
measured on the default model (49k vocabulary) it lowers peak memory by ~0.4 GB per 1k tokens.
"""

from __future__ import annotations

from contextlib import nullcontext

from tuneforge.data.batching import collate
from tuneforge.data.tokenization import IGNORE_INDEX

# Model types whose logits are exactly lm_head(last hidden state): no softcapping or logit scaling.
PLAIN_HEAD_MODELS = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gpt2",
    "gpt_neo",
    "gpt_neox",
    "phi",
    "phi3",
    "olmo",
    "olmo2",
    "smollm3",
    "starcoder2",
}
CHUNK_TOKENS = 256  # positions per head+loss chunk: (256 x 49152) fp32 logits = 50 MB at a time
# A frozen head (LoRA, QLoRA) has no gradient to sum, so half the chunk costs nothing: measured on 2 cores with
# AMX, 1,024 tokens of the default model's head 181-188 ms at 128 against 187-200 ms at 256 (64: 229-238 ms),
# and its buffers take 38 MB less. A trainable head's sum is quicker in 256-token chunks (323-335 against
# 419-432 ms at 128).
FROZEN_HEAD_CHUNK_TOKENS = 128
HEAD_GRAD_CHUNKS = 4  # chunks whose head gradient is summed in the compute dtype before the fp32 total


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
    # No KV cache while training or scoring: it would only hold a copy of every layer's keys and values.
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def forward_logits(model, batch):
    """Full logits for a collated batch (evaluation, generation checks)."""
    return model(**model_inputs(batch)).logits


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_direct_head(model) -> bool:
    base = _causal_lm(model)
    return (
        getattr(base.config, "model_type", None) in PLAIN_HEAD_MODELS
        and base.get_output_embeddings() is not None
    )


def _head_loss(lm_head, hidden, targets):
    import torch.nn.functional as F

    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def _fusable_head(lm_head):
    """The head's plain nn.Linear, or None when a wrapper (LoRA on lm_head, ...) must run as a module."""
    import torch

    if type(lm_head) is torch.nn.Linear:
        return lm_head
    inner = getattr(lm_head, "modules_to_save", None)  # PEFT modules_to_save: a trainable copy of the head
    if inner is not None and not getattr(lm_head, "disable_adapters", False):
        active = getattr(lm_head, "active_adapter", None)
        active = active[0] if isinstance(active, (list, tuple)) else active
        if active in inner and type(inner[active]) is torch.nn.Linear:
            return inner[active]
    return None


def _linear_cross_entropy_class():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """sum(cross_entropy(hidden @ weight.T + bias, targets)), with its gradients computed chunk by chunk in
        the forward pass; the backward pass only scales them."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, chunk):
            need_hidden, need_weight = hidden.requires_grad, weight.requires_grad
            need_bias = bias is not None and bias.requires_grad
            device = hidden.device.type
            # Every matmul runs in autocast's dtype when it is on (as nn.Linear and autograd would), else in
            # the inputs' own; each cast of the head is made once, not once per chunk.
            compute = (
                torch.get_autocast_dtype(device)
                if torch.is_autocast_enabled(device)
                else torch.promote_types(hidden.dtype, weight.dtype)
            )
            with torch.autocast(device, enabled=False):
                w = weight.detach().to(compute)
                b = None if bias is None else bias.detach().to(compute)
                h_all = hidden.detach().to(compute)
                total = torch.zeros((), device=hidden.device, dtype=torch.float32)
                grad_hidden = torch.empty_like(hidden) if need_hidden else None
                # The head's gradient (full fine-tuning) is summed by addmm itself in the matmuls' dtype, and
                # added to the fp32 total every HEAD_GRAD_CHUNKS chunks instead of a (vocab x hidden) cast-and-add
                # per chunk: on an AMX CPU the head gradient's cost over 1,024 tokens fell 270 -> 100 ms, a full
                # fine-tune step 1.87-1.92 -> 1.76-1.79 s (benchmarks/step_profile.py --case full). The sum is
                # rounded to bf16 at most that many times, where one matmul over all tokens (autograd's) rounds once.
                pending = torch.zeros_like(weight, dtype=compute) if need_weight else None
                grad_weight = None
                # fp16's range (65504) could overflow a sum over chunks: there each chunk is added at once
                flush_every = HEAD_GRAD_CHUNKS if compute == torch.bfloat16 else 1
                grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
                # Two (chunk x vocab) buffers reused by every chunk: a fresh 50 MB tensor per chunk is mapped
                # from the OS and page-faulted in each time (glibc mmaps anything over 32 MB), which measured
                # ~1.7x slower on a CPU than the same arithmetic in place.
                rows = min(chunk, hidden.shape[0])
                low = torch.empty(rows, w.shape[0], device=hidden.device, dtype=compute)
                in_place = compute == torch.float32  # fp32 logits: the matmul's buffer is the softmax's
                logits32 = low if in_place else torch.empty_like(low, dtype=torch.float32)
                starts = range(0, hidden.shape[0], chunk)
                for index, start in enumerate(starts):
                    h, t = h_all[start : start + chunk], targets[start : start + chunk]
                    n = len(t)
                    if b is None:
                        torch.mm(h, w.t(), out=low[:n])
                    else:
                        torch.addmm(b, h, w.t(), out=low[:n])
                    logits = logits32[:n]
                    if not in_place:
                        logits.copy_(low[:n])
                    # log-sum-exp in place: shift by the row maximum, exponentiate, sum
                    logits.sub_(logits.amax(dim=-1, keepdim=True))
                    target_logits = logits.gather(1, t[:, None]).squeeze(1)
                    sums = logits.exp_().sum(dim=-1)
                    total += (sums.log() - target_logits).sum()
                    if not (need_hidden or need_weight or need_bias):
                        continue
                    # d(sum of losses)/d(logits) = softmax(logits) - one_hot(target), made in place
                    grad_logits = logits.div_(sums[:, None])
                    grad_logits[torch.arange(n, device=t.device), t] -= 1
                    if need_bias:
                        grad_bias += grad_logits.sum(0)  # from the fp32 values, before any cast
                    if not in_place:
                        grad_logits = low[:n].copy_(grad_logits)  # back to the matmuls' dtype
                    if need_hidden:
                        rows_out = grad_hidden[start : start + chunk]
                        if hidden.dtype == compute:
                            torch.mm(grad_logits, w, out=rows_out)
                        else:
                            rows_out.copy_(grad_logits @ w)
                    if need_weight:
                        chunk_hidden = h_all[start : start + chunk]
                        pending.addmm_(grad_logits.t(), chunk_hidden)
                        last = index == len(starts) - 1
                        if pending.dtype != torch.float32 and (last or (index + 1) % flush_every == 0):
                            grad_weight = (
                                pending.float() if grad_weight is None else grad_weight.add_(pending)
                            )
                            if not last:
                                pending.zero_()
                if need_weight and grad_weight is None:  # fp32 compute: summed in fp32 all along
                    grad_weight = pending
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            ctx.weight_dtype = weight.dtype
            return total

        @staticmethod
        def backward(ctx, grad_output):
            grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
            scale = grad_output.to(torch.float32)
            return (
                None if grad_hidden is None else grad_hidden * scale.to(grad_hidden.dtype),
                None if grad_weight is None else grad_weight.mul_(scale).to(ctx.weight_dtype),
                None if grad_bias is None else (grad_bias * scale).to(ctx.weight_dtype),
                None,
                None,
            )

    return LinearCrossEntropy


_LINEAR_CROSS_ENTROPY = None


def linear_cross_entropy_sum(hidden, weight, bias, targets, chunk: int = 0):
    """Summed cross-entropy of `hidden @ weight.T (+ bias)` against `targets`, never holding all the logits."""
    global _LINEAR_CROSS_ENTROPY
    if _LINEAR_CROSS_ENTROPY is None:
        _LINEAR_CROSS_ENTROPY = _linear_cross_entropy_class()
    if not chunk:
        chunk = CHUNK_TOKENS if weight.requires_grad else FROZEN_HEAD_CHUNK_TOKENS
    return _LINEAR_CROSS_ENTROPY.apply(hidden, weight, bias, targets, chunk)


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
    lm_head = base.get_output_embeddings()
    linear = _fusable_head(lm_head)
    if linear is not None:
        return linear_cross_entropy_sum(selected, linear.weight, linear.bias, targets)
    # a wrapped head (LoRA on lm_head): run it as a module, recomputing each chunk in the backward pass
    total = torch.zeros((), device=hidden.device, dtype=torch.float32)
    for start in range(0, selected.shape[0], CHUNK_TOKENS):
        piece = slice(start, start + CHUNK_TOKENS)
        total = total + checkpoint(_head_loss, lm_head, selected[piece], targets[piece], use_reentrant=False)
    return total


def evaluate_loss(
    model,
    examples,
    micro_batch_size: int,
    pad_token_id: int,
    device,
    autocast=nullcontext,
    direct: bool = True,
) -> float:
    """Mean per-token loss over `examples` (no gradient), computed exactly as the training loss is."""
    import torch

    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), micro_batch_size):
            batch = collate(
                [examples[i] for i in range(start, min(start + micro_batch_size, len(examples)))],
                pad_token_id,
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                total += float(batch_loss_sum(model, batch, direct=direct))
            tokens += count_loss_tokens(batch["labels"])
    model.train(was_training)
    return total / max(tokens, 1)


def examples_without_loss(examples) -> list[int]:
    """Indices of the examples in which no position carries a label (e.g. a prompt that filled the whole
    cutoff_len): each would add nothing to the loss but still take a place in its batch."""
    rows = getattr(examples, "rows", examples)
    if hasattr(rows, "with_format") and len(rows):  # a datasets.Dataset: count from Arrow, no row decoding
        import numpy as np

        labels = rows.with_format("arrow")["labels"].combine_chunks()
        offsets = np.asarray(labels.offsets)
        trained = np.concatenate([[0], np.cumsum(np.asarray(labels.flatten()) != IGNORE_INDEX)])
        first = np.minimum(offsets[:-1] + 1, offsets[1:])  # the first label is never predicted
        return np.flatnonzero(trained[offsets[1:]] - trained[first] == 0).tolist()
    return [i for i in range(len(examples)) if example_loss_tokens(examples[i]) == 0]
