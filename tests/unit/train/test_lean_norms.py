"""The lean RMSNorm (train/norms.py) gives autograd's own losses and gradients bit for bit, keeps less for the
backward pass, and is used only for norms whose forward is LlamaRMSNorm's very code."""

from contextlib import nullcontext

import pytest
import torch

from tests.conftest import save_tiny_model
from tuneforge.data.batching import collate
from tuneforge.models.loading import load_model
from tuneforge.train.loss import batch_loss_sum
from tuneforge.train.norms import lean_norms, llama_rms_norms


def _batch(tokenizer):
    ids = tokenizer(["a sandwich with cheese and bread, grilled in a pan until golden brown"])["input_ids"][0]
    short = ids[:9]
    return collate(
        [{"input_ids": ids, "labels": ids}, {"input_ids": short, "labels": short}], tokenizer.pad_token_id
    )


def _loss_grads_and_kept(model, batch, lean: bool, autocast):
    model.zero_grad(set_to_none=True)
    kept = {}

    def keep(tensor):  # what the forward pass keeps for the backward pass, by storage
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with (
        lean_norms(model) if lean else nullcontext(),
        torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None),
        torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t),
    ):
        loss = batch_loss_sum(model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, sum(kept.values())


CASES = {
    # name: (load precision, autocast dtype, LoRA targets or None for a full fine-tune)
    "full fp32": ("fp32", None, None),
    "full under bf16 autocast": ("fp32", torch.bfloat16, None),
    "full under fp16 autocast": ("fp32", torch.float16, None),
    "LoRA on a bf16 base": ("bf16", None, ["q_proj", "v_proj"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lean_norms_give_autograd_s_loss_and_gradients_and_keep_less(tiny_model_dir, tokenizer, case):
    from tuneforge.models.adapters import attach_lora

    precision, autocast, targets = CASES[case]
    model, _, _ = load_model(str(tiny_model_dir), precision=precision)
    if targets:
        model = attach_lora(model, rank=4, alpha=8, dropout=0.0, target_modules=targets)
    model.train()
    batch = _batch(tokenizer)
    want_loss, want, kept = _loss_grads_and_kept(model, batch, lean=False, autocast=autocast)
    loss, grads, lean_kept = _loss_grads_and_kept(model, batch, lean=True, autocast=autocast)
    assert loss == want_loss
    assert grads.keys() == want.keys() and grads
    for name, grad in want.items():
        assert torch.equal(grads[name], grad), name
    norms = llama_rms_norms(model)
    assert len(norms) == 2 * model.config.num_hidden_layers + 1
    # per norm, one fp32 (tokens x hidden) tensor fewer: the normalised copy (full fine-tune); in a LoRA run
    # the fp32 copy of x becomes bf16 x, except in the first norm, where nothing needs a gradient yet
    tokens, hidden = batch["input_ids"].numel(), model.config.hidden_size
    per_norm = tokens * hidden * (2 if targets else 4)
    assert kept - lean_kept >= (len(norms) - (1 if targets else 0)) * per_norm
    assert all("forward" not in vars(norm) for norm in norms)  # their own forwards are back


def test_lean_norms_cover_llama_style_families_and_leave_other_norms_alone(tmp_path, tokenizer):
    batch = _batch(tokenizer)
    found = {}
    for model_type in ("qwen3", "mistral", "gemma", "olmo2"):
        folder = save_tiny_model(model_type, tmp_path / model_type, tokenizer, head_dim=8)
        model, _, _ = load_model(str(folder), precision="fp32")
        model.train()
        found[model_type] = len(llama_rms_norms(model))
        want_loss, want, _ = _loss_grads_and_kept(model, batch, lean=False, autocast=torch.bfloat16)
        loss, grads, _ = _loss_grads_and_kept(model, batch, lean=True, autocast=torch.bfloat16)
        assert loss == want_loss, model_type
        assert all(torch.equal(grads[name], grad) for name, grad in want.items()), model_type
    layers = 2
    # qwen3's per-head q/k norms (over head_dim, a 4-d input) are Llama's code too
    assert found == {"qwen3": 4 * layers + 1, "mistral": 2 * layers + 1, "gemma": 0, "olmo2": 0}


def test_lean_norms_step_aside_without_gradients_and_when_switched_off(
    tiny_model_dir, tokenizer, monkeypatch
):
    from tuneforge.train import norms

    model, _, _ = load_model(str(tiny_model_dir), precision="fp32")
    batch = _batch(tokenizer)
    calls = []
    real = norms.rms_norm
    monkeypatch.setattr(norms, "rms_norm", lambda *args: calls.append(1) or real(*args))
    with lean_norms(model), torch.no_grad():
        batch_loss_sum(model, batch)
    assert calls == []  # generation and validation run the class's forward
    monkeypatch.setattr(norms, "LEAN_NORMS", False)
    with lean_norms(model):
        batch_loss_sum(model, batch)
    assert calls == []
    monkeypatch.setattr(norms, "LEAN_NORMS", True)
    with lean_norms(model):
        batch_loss_sum(model, batch)
    assert len(calls) == 2 * model.config.num_hidden_layers + 1


def test_a_loaded_model_keeps_its_lean_forwards_across_train_and_eval(tiny_model_dir):
    """transformers 5 swaps hub "kernels" into RMSNorm on every train()/eval() unless a model is loaded without them;
    validation inside a run switches modes, and the lean forwards must survive it."""
    from tuneforge.train.fused import lean_forwards, swiglu_mlps

    model, _, _ = load_model(str(tiny_model_dir), precision="fp32")
    assert not getattr(model, "use_kernels", False)
    swapped = llama_rms_norms(model) + swiglu_mlps(model)
    assert len(swapped) == 3 * model.config.num_hidden_layers + 1
    with lean_forwards(model, lora=True):
        model.eval()
        model.train()
        assert all("forward" in vars(module) for module in swapped)
    assert not any("forward" in vars(module) for module in model.modules())
