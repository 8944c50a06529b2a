"""train/dropout.py: quick LoRA dropout masks on a CPU — the rate asked for, unbiased, seeded, compile-safe."""

import shutil

import pytest
import torch

from tuneforge.train.dropout import drop_out, keep_mask, keep_probability, lora_dropouts, quick_dropout


def _within(observed: float, expected: float, count: int, sigmas: float = 5.0) -> bool:
    return abs(observed - expected) <= sigmas * (expected * (1 - expected) / count) ** 0.5


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_keep_mask_keeps_each_value_with_the_probability_asked_for(p):
    torch.manual_seed(3)
    x = torch.empty(2049, 577, dtype=torch.bfloat16)  # an odd count: the last 64-bit word is partly used
    mask = keep_mask(x, p)
    assert mask.shape == x.shape and mask.dtype == torch.bool
    assert keep_probability(p) == pytest.approx(1 - p, abs=1 / 65536)
    assert _within(mask.float().mean().item(), keep_probability(p), mask.numel())
    lanes = mask.flatten()[: mask.numel() // 4 * 4].view(-1, 4).float()  # the four 16-bit lanes of each word
    for lane in lanes.unbind(1):
        assert _within(lane.mean().item(), keep_probability(p), lane.numel())
    rows = mask.float().mean(1)  # no stretch of the generator's stream keeps more than another
    assert rows.std().item() < 2 * (keep_probability(p) * (1 - keep_probability(p)) / x.shape[1]) ** 0.5


def test_drop_out_keeps_the_mean_and_zeroes_the_rest():
    torch.manual_seed(4)
    x = torch.ones(1000, 1000)
    dropped = drop_out(x, 0.3)
    kept = dropped != 0
    assert torch.allclose(dropped[kept], torch.tensor(1 / keep_probability(0.3)))
    # mean of a Bernoulli(keep) x (1 / keep) value: 1, standard deviation sqrt((1 - keep) / keep / n)
    assert abs(dropped.mean().item() - 1) < 5 * (0.3 / 0.7 / x.numel()) ** 0.5


def test_a_seed_gives_the_same_masks_and_each_draw_a_new_one():
    x = torch.empty(64, 96)
    torch.manual_seed(5)
    first, second = keep_mask(x, 0.2), keep_mask(x, 0.2)
    torch.manual_seed(5)
    assert torch.equal(keep_mask(x, 0.2), first) and torch.equal(keep_mask(x, 0.2), second)
    assert not torch.equal(first, second)


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
    reason="torch.compile on a CPU needs a C++ compiler",
)
def test_compiled_code_draws_the_eager_masks_and_keeps_two_draws_apart():
    def dropouts(x, weight):  # q, k and v's adapters: one input, masks drawn alike; then one of a later input
        q, k = drop_out(x, 0.3) @ weight, drop_out(x, 0.3) @ weight
        return q, k, drop_out(q * k, 0.3)

    x, weight = torch.randn(32, 48) + 5, torch.randn(48, 48).requires_grad_()  # as in training: grads wanted
    results = {}
    for compiled in (False, True):
        torch.manual_seed(6)
        results[compiled] = (torch.compile(dropouts, fullgraph=True) if compiled else dropouts)(x, weight)
    for got, want in zip(results[True], results[False], strict=True):
        assert torch.equal(got == 0, want == 0)  # the same masks
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-3)
    assert not torch.equal(results[True][0], results[True][1])  # two masks, not one drawn once


def test_quick_dropout_serves_peft_s_lora_dropouts_in_training_only(tiny_model_dir):
    from tuneforge.models.adapters import attach_lora
    from tuneforge.models.loading import load_model

    model, _, _ = load_model(str(tiny_model_dir), precision="fp32")
    model = attach_lora(model, rank=4, alpha=8, dropout=0.3, target_modules=["q_proj", "v_proj"])
    dropouts = lora_dropouts(model)
    assert len(dropouts) == 2 * 2  # q and v in each of 2 layers
    x = torch.randn(8, 16)
    with quick_dropout(model) as swapped:
        assert swapped == len(dropouts)
        module = dropouts[0].train()
        torch.manual_seed(8)
        got = module(x)
        torch.manual_seed(8)
        assert torch.equal(got, drop_out(x, 0.3))
        assert torch.equal(module.eval()(x), x)
    assert all("forward" not in vars(module) for module in dropouts)  # torch's own forward is back


def test_a_lean_lora_layer_keeps_its_cpu_dropout_mask_as_bits_and_gets_it_back():
    from tuneforge.train.dropout import pack_mask, unpack_mask
    from tuneforge.train.fused import dropout_linear

    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 5, 7, generator=generator) > 0.3  # 105 values: not a whole number of bytes
    bits = pack_mask(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == 14
    assert torch.equal(unpack_mask(bits, mask.shape), mask)

    x = torch.randn(2, 16, 64, requires_grad=True)
    weight = torch.randn(8, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = dropout_linear(x, weight, 0.25, torch.float32)
    out.sum().backward()
    masks = [t for t in saved if t.dtype in (torch.bool, torch.uint8)]
    assert [(t.dtype, t.numel()) for t in masks] == [(torch.uint8, x.numel() // 8)]
    # the gradient is zero exactly where the forward pass dropped a value
    dropped = x.grad == 0
    assert 0.15 < dropped.float().mean() < 0.35
