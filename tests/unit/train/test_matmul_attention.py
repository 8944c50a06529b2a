"""The CPU matmul attention (train/attention.py) equals transformers' SDPA attention on the tiny model — losses and
every gradient — for causal, right-padded and packed batches, in fp32 and under bf16 autocast, and hands
every shape it does not cover to SDPA."""

import pytest
import torch

from tuneforge.data.batching import collate
from tuneforge.data.packing import pack_examples
from tuneforge.models.loading import load_model
from tuneforge.train import attention
from tuneforge.train.attention import NAME, matmul_attention
from tuneforge.train.loss import batch_loss_sum


def _examples(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(5, 1000, (n,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": list(ids)})
    return examples


BATCHES = {
    "causal": lambda: collate(_examples([24, 24, 24]), pad_token_id=0),
    "right-padded": lambda: collate(_examples([24, 9, 17]), pad_token_id=0),
    "packed": lambda: collate(pack_examples(_examples([7, 12, 5, 9, 14, 6]), 32), pad_token_id=0),
}


def _loss_and_grads(model, batch, use_matmul: bool, autocast: bool = False):
    model.zero_grad(set_to_none=True)
    context = matmul_attention(model) if use_matmul else torch.autocast("cpu", enabled=False)
    with context, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = batch_loss_sum(model, batch)
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    model, _, _ = load_model(str(tiny_model_dir), precision="fp32")  # 4 query heads on 2 key/value heads
    assert model.config._attn_implementation == "sdpa"
    return model.train()


@pytest.mark.parametrize("shape", sorted(BATCHES))
def test_matmul_attention_gives_sdpa_losses_and_gradients_in_fp32(model, shape, monkeypatch):
    batch = BATCHES[shape]()
    want_loss, want = _loss_and_grads(model, batch, use_matmul=False)
    attention.register()
    calls = []

    inner = attention._ATTENTION  # counted: proves that the matmul path, not SDPA, ran
    monkeypatch.setattr(attention, "_ATTENTION", lambda *args: calls.append(1) or inner(*args))
    got_loss, got = _loss_and_grads(model, batch, use_matmul=True)
    assert len(calls) == model.config.num_hidden_layers
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    assert got.keys() == want.keys() and len(got) == len(list(model.parameters()))
    for name in want:
        # fp32 rounding of another summation order, relative to the tensor's largest gradient
        assert float((got[name] - want[name]).abs().max()) <= 1e-5 * float(want[name].abs().max()), name
    assert model.config._attn_implementation == "sdpa"  # restored after the block


def test_matmul_attention_under_bf16_autocast_is_as_close_to_fp32_as_sdpa(model):
    batch = BATCHES["packed"]()
    exact_loss, exact = _loss_and_grads(model, batch, use_matmul=False)
    sdpa_loss, sdpa = _loss_and_grads(model, batch, use_matmul=False, autocast=True)
    matmul_loss, matmul = _loss_and_grads(model, batch, use_matmul=True, autocast=True)
    assert abs(matmul_loss - exact_loss) <= 2 * abs(sdpa_loss - exact_loss) + 1e-3 * exact_loss
    for name in exact:
        norm = exact[name].norm()
        sdpa_error, matmul_error = (sdpa[name] - exact[name]).norm(), (matmul[name] - exact[name]).norm()
        assert matmul_error <= 2 * sdpa_error + 1e-3 * norm, name


def test_shapes_the_matmul_path_does_not_cover_go_to_sdpa(model, monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa

    seen = []
    real = sdpa.sdpa_attention_forward
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **k: seen.append(1) or real(*a, **k))
    long = collate(_examples([attention.MAX_SEQUENCE + 8]), pad_token_id=0)
    want_loss, _ = _loss_and_grads(model, long, use_matmul=False)
    seen.clear()
    got_loss, _ = _loss_and_grads(model, long, use_matmul=True)
    assert len(seen) == model.config.num_hidden_layers  # every layer fell back
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    query = torch.zeros(1, 4, 8, 8)
    seen.clear()
    attention._matmul_attention_forward(
        model.model.layers[0].self_attn, query, query[:, :2], query[:, :2], None, 0.1
    )
    assert seen == [1]  # attention dropout: SDPA's


def test_the_block_restores_sdpa_after_an_error_and_skips_other_implementations(model, tiny_model_dir):
    with pytest.raises(RuntimeError), matmul_attention(model):
        assert model.config._attn_implementation == NAME
        raise RuntimeError("a failed step")
    assert model.config._attn_implementation == "sdpa"
    eager, _, _ = load_model(str(tiny_model_dir), precision="fp32")
    eager.set_attn_implementation("eager")
    with matmul_attention(eager):
        assert eager.config._attn_implementation == "eager"  # not switched: it was not SDPA


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_attention_gives_autograd_s_bits_keeping_bf16_copies_and_no_probabilities(dtype, keep):
    """Against autograd's own matmuls, masked_fill and softmax under bf16 autocast: the same outputs and
    gradients bit for bit (the mask's bias of the lowest value gives masked_fill's scores); a full fine-tune's
    fp32 queries and keys (rotary in fp32) are kept as the bf16 copies the matmuls make, and the probabilities
    are made again in the backward pass, not kept (unless KEEP_PROBABILITIES: `keep`)."""
    attention.register()
    generator = torch.Generator().manual_seed(0)
    grouped = torch.randn(2, 2, 48, 16, generator=generator).to(dtype).requires_grad_()
    key, value = (torch.randn(2, 2, 24, 16, generator=generator).to(dtype).requires_grad_() for _ in range(2))
    allowed = torch.ones(24, 24, dtype=torch.bool).tril()  # broadcast over the 2 query heads of a group
    upstream = torch.randn(2, 2, 48, 16, generator=generator)

    def run(function):
        saved = []
        hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t)
        with hooks, torch.autocast("cpu", dtype=torch.bfloat16):
            out = function(grouped, key, value)
        grads = torch.autograd.grad(out, (grouped, key, value), upstream.to(out.dtype))
        return out, grads, saved

    def reference(g, k, v):
        blocked = ~allowed.repeat(2, 1)
        scores = torch.matmul(g, k.transpose(-1, -2)).masked_fill(blocked, torch.finfo(torch.bfloat16).min)
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    def matmul_attention(g, k, v):
        return attention._ATTENTION(*attention._autocast_inputs(g, k, v), allowed, keep)[0]

    out, grads, saved = run(matmul_attention)
    want_out, want_grads, _ = run(reference)
    assert torch.equal(out, want_out)
    for got, want in zip(grads, want_grads, strict=True):
        assert torch.equal(got, want)
    assert {t.dtype for t in saved if t.is_floating_point()} == {torch.bfloat16}
    kept_probabilities = [t for t in saved if t.shape == (2, 2, 48, 24)]
    assert len(kept_probabilities) == (1 if keep else 0)


def test_compiled_blocks_make_the_probabilities_again_instead_of_keeping_them(model):
    """Traced by torch.compile, the matmul attention stays one custom op with its own backward: the partitioner
    keeps no probabilities (it did when it traced an autograd.Function, whose recomputation it merged with the
    forward); the losses and gradients stay eager's within compile's rounding."""
    from tuneforge.train.fused import compile_decoder_layers, uncompile_decoder_layers

    batch = BATCHES["packed"]()
    length = batch["input_ids"].shape[1]

    def run():
        saved = []
        model.zero_grad(set_to_none=True)
        hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t)
        with matmul_attention(model), hooks, torch.autocast("cpu", dtype=torch.bfloat16):
            loss = batch_loss_sum(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        # (batch, key/value heads, query heads of a group x length, length): 4 query heads on 2 here
        probabilities = [
            t.shape for t in saved if t.is_floating_point() and t.shape[1:] == (2, 2 * length, length)
        ]
        return float(loss), grads, probabilities

    want_loss, want, eager_kept = run()
    torch._dynamo.reset()
    compile_decoder_layers(model)
    try:
        loss, grads, compiled_kept = run()
    finally:
        uncompile_decoder_layers(model)
        torch._dynamo.reset()
    assert eager_kept == [] and compiled_kept == [], (eager_kept, compiled_kept)
    assert loss == pytest.approx(want_loss, rel=5e-3)
    for name, grad in want.items():
        # bf16 autocast: inductor rounds a fused chain once where eager rounds each op
        assert (grads[name] - grad).norm() <= 0.02 * grad.norm(), name
