"""The training loop on a tiny random model: it learns, trains only what it should, and saves what it says."""

import contextlib
import json
import re

import pytest
import torch

from tuneforge.config import RunConfig
from tuneforge.data.batching import collate
from tuneforge.data.examples import IGNORE_INDEX, PreparedData
from tuneforge.models.loading import load_model
from tuneforge.models.methods import prepare_for_training
from tuneforge.train.loop import train
from tuneforge.train.loss import token_loss_sum

FAST = dict(
    precision="fp32",  # exact comparisons: auto takes bf16 on CPUs where its matmuls are faster
    learning_rate=3e-2,
    batch_size=8,
    micro_batch_size=8,
    logging_steps=1,
    lr_scheduler="constant",
    rank=4,
    alpha=8,
    lora_dropout=0.0,
    target_modules=["all-linear"],
)


def test_lora_lowers_the_loss_and_leaves_every_base_weight_bit_identical(tiny_llm, lines_file, tmp_path):
    base_before = {k: v.clone() for k, v in tiny_llm.model.state_dict().items()}
    run = tiny_llm.train(
        lines_file, method="lora", max_steps=25, output_dir=str(tmp_path / "run"), show_progress=False, **FAST
    )
    assert run.final_loss < run.losses[0] - 0.5
    state = tiny_llm.model.state_dict()
    lora_keys = [k for k in state if "lora_" in k]
    assert lora_keys and all(state[k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)  # B starts at 0
    base_after = {
        k.removeprefix("base_model.model.").replace(".base_layer", ""): v
        for k, v in state.items()
        if "lora_" not in k
    }
    assert base_after.keys() == base_before.keys()
    for name, before in base_before.items():
        assert torch.equal(base_after[name], before), name
    frozen = [p for p in tiny_llm.model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)  # no frozen weight ever received a gradient


def test_full_fine_tuning_changes_weights_and_lowers_the_loss(tiny_llm, lines_file, tmp_path):
    before = tiny_llm.model.model.layers[0].mlp.up_proj.weight.clone()
    run = tiny_llm.train(
        lines_file,
        method="full",
        max_steps=8,
        output_dir=str(tmp_path / "run"),
        show_progress=False,
        **dict(FAST, learning_rate=3e-3),
    )
    assert run.final_loss < run.losses[0]
    assert not torch.equal(tiny_llm.model.model.layers[0].mlp.up_proj.weight, before)
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    settings = next(
        line for line in (tmp_path / "run" / "report.md").read_text().splitlines() if "settings:" in line
    )
    assert (
        "learning_rate 0.003" in settings and "rank" not in settings
    )  # no LoRA settings for a full fine-tune


def test_run_folder_holds_config_metrics_adapter_and_report(tiny_llm, lines_file, tmp_path):
    run_dir = tmp_path / "run"
    tiny_llm.train(lines_file, max_steps=3, output_dir=str(run_dir), show_progress=False, **FAST)
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert RunConfig.__name__ and "rank: 4" in (run_dir / "config.yaml").read_text()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch"} <= set(records[0])
    assert "training loss: first" in (run_dir / "report.md").read_text()


def test_train_refuses_a_model_device_or_trust_setting_other_than_the_loaded_ones(
    tiny_llm, tiny_model_dir, lines_file, tmp_path
):
    from tuneforge.errors import ConfigError

    for key, value, fix in [
        ("model", "gpt2", "tf.load('gpt2')"),
        ("device", "cuda", "device='cuda'"),
        ("trust_remote_code", True, "trust_remote_code=True"),
    ]:
        with pytest.raises(ConfigError, match=rf"train\({key}=.*{re.escape(fix)}"):
            tiny_llm.train(lines_file, max_steps=1, **{key: value})
    assert tiny_llm.last_run is None  # refused before anything ran
    # the loaded ones, the folder spelled with a trailing slash
    same = dict(model=f"{tiny_model_dir}/", device="cpu", trust_remote_code=False)
    assert tiny_llm.train(lines_file, max_steps=1, output_dir=str(tmp_path / "run"), **same).steps == 1


def test_train_refuses_a_config_files_model_other_than_the_loaded_one_and_a_keyword_overrides_it(
    tiny_llm, tiny_model_dir, lines_file, tmp_path
):
    from tuneforge.config import RunConfig
    from tuneforge.errors import ConfigError

    config = tmp_path / "run.yaml"
    config.write_text(f"model: gpt2\ndata: {lines_file}\nmax_steps: 1\n")
    with pytest.raises(
        ConfigError, match=r"run\.yaml sets model: 'gpt2'.*tf\.load\('gpt2'\).*leave model out"
    ):
        tiny_llm.train(config=config)
    with pytest.raises(ConfigError, match=r"the RunConfig sets device: 'cuda'"):
        tiny_llm.train(lines_file, config=RunConfig(device="cuda", max_steps=1))
    assert tiny_llm.last_run is None  # refused before anything ran
    run = tiny_llm.train(config=config, model=str(tiny_model_dir), output_dir=str(tmp_path / "run"))
    assert run.steps == 1  # the keyword names the loaded model, and wins over the file as everywhere


def test_stop_at_loss_ends_the_run_early(tiny_llm, lines_file, tmp_path):
    run = tiny_llm.train(
        lines_file,
        max_steps=200,
        stop_at_loss=9.0,
        output_dir=str(tmp_path / "run"),
        show_progress=False,
        **FAST,
    )
    assert run.steps < 200 and run.final_loss <= 9.0 and "stop_at_loss" in run.stopped_because


def test_masked_tokens_carry_no_loss():
    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[1, 2, IGNORE_INDEX, 3]])
    changed = logits.clone()
    changed[0, 1] += 100.0  # position 1 predicts label[2], which is masked
    assert torch.allclose(token_loss_sum(logits, labels), token_loss_sum(changed, labels))


def _one_step(model_dir, examples, tmp_path, **settings):
    model, tokenizer, _ = load_model(str(model_dir), precision="fp32", device="cpu")
    config = RunConfig(**dict(FAST, max_steps=1, method="full", learning_rate=1e-3, **settings))
    torch.manual_seed(0)
    model = prepare_for_training(model, config)
    data = PreparedData("lines", examples)
    model, result = train(model, tokenizer, data, config, tmp_path, precision="fp32", show_progress=False)
    return result.losses[0], model.model.layers[1].self_attn.q_proj.weight.detach().clone()


def test_gradient_accumulation_gives_the_same_loss_and_update_as_one_big_batch(
    tiny_model_dir, tokenizer, tmp_path
):
    texts = [f"example number {i} " + "with more words " * (i % 4) for i in range(16)]
    examples = [{"input_ids": ids, "labels": list(ids)} for ids in tokenizer(texts)["input_ids"]]
    loss_big, weight_big = _one_step(
        tiny_model_dir, examples, tmp_path / "a", batch_size=16, micro_batch_size=16
    )
    loss_acc, weight_acc = _one_step(
        tiny_model_dir, examples, tmp_path / "b", batch_size=16, micro_batch_size=2
    )
    assert loss_acc == pytest.approx(loss_big, rel=1e-5)
    assert torch.allclose(weight_acc, weight_big, atol=1e-6)


def test_collate_pads_without_attention_or_loss():
    batch = collate(
        [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}],
        pad_token_id=0,
        pad_to_multiple_of=4,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def test_saved_adapter_reloads_with_identical_logits(tiny_llm, tiny_model_dir, lines_file, tmp_path):
    import tuneforge as tf

    tiny_llm.train(lines_file, max_steps=3, output_dir=str(tmp_path / "run"), show_progress=False, **FAST)
    saved = tiny_llm.save(tmp_path / "adapter")
    reloaded = tf.load(str(tiny_model_dir), adapter=saved, precision="fp32")
    inputs = tiny_llm.tokenizer("you can make a", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(tiny_llm.model(**inputs).logits, reloaded.model(**inputs).logits, atol=1e-5)
    assert tiny_llm.generate("you can", do_sample=False, max_new_tokens=5) == reloaded.generate(
        "you can", do_sample=False, max_new_tokens=5
    )


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["lm_head", "q_proj"], "full", "modules_to_save"])
def test_direct_head_loss_equals_the_full_logits_loss_and_gradients(tiny_model_dir, tokenizer, targets):
    from tuneforge.models.adapters import attach_lora
    from tuneforge.train import loss as loss_module

    model, _, _ = load_model(str(tiny_model_dir), precision="fp32")
    if targets == "modules_to_save":  # a trainable copy of the head beside LoRA
        model = attach_lora(model, 4, 8, 0.0, ["q_proj"], modules_to_save=["lm_head"])
    elif targets != "full":  # full: every weight trains, the tied head/embedding included
        model = attach_lora(model, 4, 8, 0.0, targets)
    for name, param in model.named_parameters():  # non-zero B so the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    texts = ["a short one", "a somewhat longer example sentence with more words in it"]
    batch = collate(
        [{"input_ids": ids, "labels": [-100] * 2 + ids[2:]} for ids in tokenizer(texts)["input_ids"]],
        tokenizer.pad_token_id,
    )
    results = []
    for direct, chunk in ((False, 1024), (True, 1024), (True, 3)):  # chunk=3 forces several chunks
        loss_module.CHUNK_TOKENS = chunk
        model.zero_grad()
        value = loss_module.batch_loss_sum(model, batch, direct=direct)
        value.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((value.item(), grads))
    loss_module.CHUNK_TOKENS = 256
    reference_value, reference_grads = results[0]
    for value, grads in results[1:]:
        assert value == pytest.approx(reference_value, rel=1e-5)
        for got, want in zip(grads, reference_grads, strict=True):
            # fp32 sums in another order (chunks): measured up to 5e-6 apart on gradients of size ~1
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("setting", ["bf16 weights", "fp32 weights under bf16 autocast"])
def test_fused_head_in_bf16_equals_plain_cross_entropy(setting):
    """The fused head's loss and gradients in bf16 (a bf16 base, or fp32 weights under autocast as a full
    fine-tune runs) equal nn.Linear + cross_entropy's, also across several chunks of reused buffers."""
    from tuneforge.train.loss import linear_cross_entropy_sum

    torch.manual_seed(0)
    dtype = torch.bfloat16 if setting == "bf16 weights" else torch.float32
    hidden = torch.randn(37, 16, dtype=dtype, requires_grad=True)
    weight = (torch.randn(301, 16) * 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, 301, (37,))
    results = []
    # chunk 2: 19 chunks, so the head gradient is added to its fp32 total several times (loss.HEAD_GRAD_CHUNKS)
    for fused, chunk in ((False, 0), (True, 8), (True, 64), (True, 2)):
        hidden.grad = weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                value = linear_cross_entropy_sum(hidden, weight, None, targets, chunk)
            else:
                logits = torch.nn.functional.linear(hidden, weight).float()
                value = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        value.backward()
        results.append((value.item(), hidden.grad.float().clone(), weight.grad.float().clone()))
    (want, want_hidden, want_weight), *fused_results = results
    for value, grad_hidden, grad_weight in fused_results:
        assert value == pytest.approx(want, rel=1e-5)
        # bf16 gradients: one rounding of the same products (measured within 1 bf16 ulp, 2^-8 relative)
        assert torch.allclose(grad_hidden, want_hidden, rtol=1e-2, atol=1e-2 * want_hidden.abs().max().item())
        assert torch.allclose(grad_weight, want_weight, rtol=1e-2, atol=1e-2 * want_weight.abs().max().item())
    assert torch.equal(fused_results[0][1], fused_results[1][1])  # chunking changes nothing per row


def test_lean_mlp_gives_the_same_loss_and_gradients_and_keeps_less(tiny_model_dir, tokenizer):
    from tuneforge.train.fused import lean_mlp
    from tuneforge.train.loss import batch_loss_sum

    model, _, _ = load_model(str(tiny_model_dir), precision="fp32")  # full: the MLP weights get gradients too
    ids = tokenizer(["a sandwich with cheese and bread, grilled in a pan"])["input_ids"][0]
    batch = collate([{"input_ids": ids, "labels": ids}], tokenizer.pad_token_id)
    results = []
    for lean in (False, True):
        model.zero_grad()
        saved = []
        with (
            lean_mlp(model) if lean else contextlib.nullcontext(),
            torch.autograd.graph.saved_tensors_hooks(
                lambda t, saved=saved: saved.append(t.numel()) or t, lambda t: t
            ),
        ):
            loss = batch_loss_sum(model, batch)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()], sum(saved)))
    (plain_loss, plain_grads, plain_saved), (lean_loss, lean_grads, lean_saved) = results
    assert lean_loss == pytest.approx(plain_loss, rel=1e-6)
    for got, want in zip(lean_grads, plain_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    assert lean_saved < plain_saved
    assert "forward" not in vars(model.model.layers[0].mlp)  # the class's own forward is back


def _lora_loss_grads_saved(model, batch, lean: bool, autocast: bool, device: str, quick: bool = True):
    from tuneforge.train.dropout import quick_dropout
    from tuneforge.train.fused import lean_lora
    from tuneforge.train.loss import batch_loss_sum

    model.zero_grad()
    # the same dropout masks for PEFT's forward and the lean one (CPU and CUDA generators); on a CPU both
    # draw them as a run's steps do, with train/dropout.py's quick masks (unless quick is False: torch's)
    torch.manual_seed(7)
    saved = {}  # storage address -> bytes: a tensor kept by q, k and v alike is one tensor in memory
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def keep(tensor):
        if tensor.untyped_storage().data_ptr() not in weights:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with (
        quick_dropout(model) if quick else contextlib.nullcontext(),
        lean_lora(model) if lean else contextlib.nullcontext(),
        torch.autocast(device, dtype=torch.bfloat16, enabled=autocast),
        torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t),
    ):
        loss = batch_loss_sum(model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, sum(saved.values())


CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)"
)


@pytest.mark.gpu
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_lean_lora_gives_peft_s_loss_and_gradients_with_dropout_and_keeps_less(
    tiny_model_dir, tokenizer, autocast, device
):
    from tuneforge.models.adapters import attach_lora
    from tuneforge.train.fused import lora_linear_layers

    model, _, _ = load_model(str(tiny_model_dir), precision="bf16" if autocast else "fp32")
    model = attach_lora(model.to(device), rank=4, alpha=8, dropout=0.3, target_modules=["all-linear"])
    for layer in lora_linear_layers(model):  # B starts at zero; give the update a part in the loss
        for lora_b in layer.lora_B.values():
            torch.nn.init.normal_(lora_b.weight, std=0.5)
    model.train()
    ids = tokenizer(["a sandwich with cheese and bread, grilled in a pan until golden"])["input_ids"][0]
    batch = {
        key: value.to(device)
        for key, value in collate([{"input_ids": ids, "labels": ids}] * 2, tokenizer.pad_token_id).items()
    }
    peft_loss, peft_grads, peft_saved = _lora_loss_grads_saved(model, batch, False, autocast, device)
    lean_loss, lean_grads, lean_saved = _lora_loss_grads_saved(model, batch, True, autocast, device)
    tolerance = dict(rel=1e-3) if autocast else dict(rel=1e-6)
    assert lean_loss == pytest.approx(peft_loss, **tolerance)
    assert (
        peft_grads.keys() == lean_grads.keys() and len(peft_grads) == 2 * 7 * 2
    )  # A and B of 7 modules x 2 layers
    for name, want in peft_grads.items():
        got = lean_grads[name]
        if autocast:  # bf16 matmuls in a different order: close, not the same bits
            assert (got - want).norm() < 0.01 * want.norm(), name
        else:
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), name
    # PEFT's stock forwards, torch's dropout included (quick masks alone keep less than native_dropout does)
    stock_saved = _lora_loss_grads_saved(model, batch, False, autocast, device, quick=False)[2]
    print(f"saved for backward: PEFT {stock_saved} bytes, with quick masks {peft_saved}, lean {lean_saved}")
    assert lean_saved < 0.75 * stock_saved and lean_saved < peft_saved
    assert all("forward" not in vars(layer) for layer in lora_linear_layers(model))  # PEFT's forward is back


def test_lean_layers_false_trains_with_the_stock_forwards_and_the_same_losses(
    tiny_model_dir, lines_file, tmp_path
):
    import tuneforge as tf

    settings = dict(
        FAST,
        lora_dropout=0.1,
        batch_size=4,
        micro_batch_size=2,
        max_steps=4,
        learning_rate=1e-2,
        precision="fp32",
        show_progress=False,
    )
    runs, forwards = {}, {}
    for lean in (True, False):
        llm = tf.load(str(tiny_model_dir), precision="fp32")
        seen = forwards[lean] = set()

        def which_forward(layer, args, seen=seen):  # PEFT swaps q_proj for its LoRA layer inside this block
            if layer.training:  # training steps, not the samples or the validation
                seen.add(("lora", "forward" in vars(layer.self_attn.q_proj)))
                seen.add(("mlp", "forward" in vars(layer.mlp)))

        llm.model.model.layers[0].register_forward_pre_hook(which_forward)
        runs[lean] = llm.train(lines_file, output_dir=str(tmp_path / str(lean)), lean_layers=lean, **settings)
    assert forwards[True] == {("lora", True), ("mlp", True)}  # lean forwards swapped in for training
    assert forwards[False] == {("lora", False), ("mlp", False)}  # PEFT's and transformers' own forwards
    assert runs[False].losses == pytest.approx(runs[True].losses, rel=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 8])
def test_lean_lora_on_a_quantized_base_gives_peft_s_loss_and_gradients(tiny_model_dir, tokenizer, bits):
    pytest.importorskip("bitsandbytes")
    from tuneforge.models.adapters import attach_lora
    from tuneforge.models.quantization import bnb_config
    from tuneforge.train.fused import lora_linear_layers

    model, _, _ = load_model(str(tiny_model_dir), precision="fp32", quantization=bnb_config(bits))
    model = attach_lora(model, rank=4, alpha=8, dropout=0.3, target_modules=["q_proj", "v_proj", "down_proj"])
    layers = lora_linear_layers(model)
    assert {type(layer).__name__ for layer in layers} == {"Linear4bit" if bits == 4 else "Linear8bitLt"}
    for layer in layers:
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
    model.train()
    ids = tokenizer(["melted cheese on toasted rye with mustard"])["input_ids"][0]
    batch = collate([{"input_ids": ids, "labels": ids}] * 2, tokenizer.pad_token_id)
    peft_loss, peft_grads, peft_saved = _lora_loss_grads_saved(model, batch, False, False, "cpu")
    lean_loss, lean_grads, lean_saved = _lora_loss_grads_saved(model, batch, True, False, "cpu")
    assert lean_loss == pytest.approx(peft_loss, rel=1e-6)
    for name, want in peft_grads.items():
        assert torch.allclose(lean_grads[name], want, rtol=1e-5, atol=1e-6), name
    assert lean_saved < peft_saved


@pytest.mark.gpu
def test_lean_lora_leaves_dora_and_disabled_adapters_to_peft(tiny_model_dir, tokenizer):
    from peft import LoraConfig, get_peft_model

    from tuneforge.train.fused import lean_lora

    model, _, _ = load_model(str(tiny_model_dir), precision="fp32")
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True)
    )
    ids = torch.tensor([tokenizer("grilled cheese")["input_ids"]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with lean_lora(model) as patched:
            got = model(input_ids=ids).logits
            with model.disable_adapter():
                base = model(input_ids=ids).logits
        with model.disable_adapter():
            want_base = model(input_ids=ids).logits
    assert patched == 4
    assert torch.equal(got, want) and torch.equal(base, want_base)


def test_train_keeps_the_precision_the_model_was_loaded_in_unless_given_another(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    import tuneforge as tf
    from tuneforge import hardware

    monkeypatch.setattr(
        hardware, "bf16_supported", lambda device: True
    )  # precision auto would pick bf16 here
    llm = tf.load(str(tiny_model_dir), precision="fp32", device="cpu")
    run = llm.train(lines_file, max_steps=1, output_dir=str(tmp_path / "kept"), show_progress=False)
    assert {p.dtype for p in llm.model.parameters()} == {torch.float32} and llm.precision == "fp32"
    assert "precision: `fp32`" in (tmp_path / "kept" / "report.md").read_text() and run.steps == 1
    assert (
        "precision: auto" in (tmp_path / "kept" / "config.yaml").read_text()
    )  # as given: a resume picks again
    llm.train(
        lines_file, max_steps=1, precision="auto", output_dir=str(tmp_path / "asked"), show_progress=False
    )
    assert llm.precision == "bf16"  # asked for: the frozen base is cast to the run's compute precision
