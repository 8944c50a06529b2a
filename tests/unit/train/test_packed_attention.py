"""Packed examples must not see each other: one packed forward equals separate per-example forwards."""

import torch

from tuneforge.data.batching import collate
from tuneforge.data.packing import pack_examples
from tuneforge.models.loading import load_model
from tuneforge.train.loss import batch_loss_sum, model_inputs


def test_packed_logits_equal_separate_forwards(tiny_model_dir, tokenizer):
    model, _, _ = load_model(str(tiny_model_dir), precision="fp32")
    assert model.config.use_cache  # the pitfall: with the cache on, packed position_ids would be ignored
    texts = ["you can make a cheese sandwich", "toast two slices", "a classic cheese sandwich needs bread"]
    examples = [{"input_ids": ids, "labels": list(ids)} for ids in tokenizer(texts)["input_ids"]]
    blocks = pack_examples(examples, block_size=64)
    assert len(blocks) == 1
    packed = collate(blocks, tokenizer.pad_token_id)
    with torch.no_grad():
        packed_logits = model(**model_inputs(packed)).logits[0]  # (seq, vocab)
        start = 0
        for example in examples:
            n = len(example["input_ids"])
            alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
            assert (packed_logits[start : start + n] - alone).abs().max().item() <= 1e-3
            start += n


def test_packed_loss_equals_the_sum_of_separate_losses(tiny_model_dir, tokenizer):
    model, _, _ = load_model(str(tiny_model_dir), precision="fp32")
    texts = ["you can make a cheese sandwich", "toast two slices"]
    examples = [{"input_ids": ids, "labels": list(ids)} for ids in tokenizer(texts)["input_ids"]]
    with torch.no_grad():
        packed = batch_loss_sum(model, collate(pack_examples(examples, 64), tokenizer.pad_token_id))
        separate = sum(batch_loss_sum(model, collate([e], tokenizer.pad_token_id)) for e in examples)
    assert torch.allclose(packed, separate, rtol=1e-4)
