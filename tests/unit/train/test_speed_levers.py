"""Speed levers equal their references on the tiny model: fused AdamW, fused projections, QLoRA in the compute
dtype; and the decisions (threads on a busy machine, packing, torch.compile) from fake readings."""

import os
import shutil
import types
from contextlib import nullcontext

import pytest
import torch

from tuneforge.config import RunConfig
from tuneforge.data.batching import collate
from tuneforge.hardware import choose_threads, usable_cores
from tuneforge.models.loading import load_model
from tuneforge.train.levers import should_compile
from tuneforge.train.optim import build_optimizer, fused_adamw_supported


def _adamw_weights_after_steps(model_dir, fused: bool) -> list[torch.Tensor]:
    model, _, _ = load_model(str(model_dir), precision="fp32")  # full fine-tuning: every tensor updated
    config = RunConfig(learning_rate=1e-3, weight_decay=0.01)
    if fused:
        optimizer = build_optimizer(model, config)
    else:  # torch's single-tensor path, the reference
        from tuneforge.train.optim import _parameter_groups

        settings = types.SimpleNamespace(weight_decay=0.01, learning_rate=1e-3)
        optimizer = torch.optim.AdamW(_parameter_groups(model, settings), lr=1e-3, foreach=False, fused=False)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        for param in model.parameters():
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], optimizer


def test_adamw_runs_the_fused_kernel_and_gives_the_single_tensor_update(tiny_model_dir):
    fused_weights, optimizer = _adamw_weights_after_steps(tiny_model_dir, fused=True)
    assert all(group["fused"] for group in optimizer.param_groups)
    reference, _ = _adamw_weights_after_steps(tiny_model_dir, fused=False)
    for got, want in zip(fused_weights, reference, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_adamw_falls_back_when_a_parameter_has_no_fused_kernel():
    integer = torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)
    assert fused_adamw_supported([{"params": [torch.nn.Parameter(torch.ones(2, 2))]}])
    assert not fused_adamw_supported([{"params": [integer]}])
    assert not fused_adamw_supported([{"params": []}])


def _lora_model(model_dir, targets):
    from tuneforge.models.adapters import attach_lora
    from tuneforge.train.fused import lora_linear_layers

    model, _, _ = load_model(str(model_dir), precision="fp32")
    model = attach_lora(model, rank=4, alpha=8, dropout=0.3, target_modules=targets)
    for layer in lora_linear_layers(model):  # B starts at zero; give the update a part in the loss
        for lora_b in layer.lora_B.values():
            torch.nn.init.normal_(lora_b.weight, std=0.5)
    return model.train()


def _loss_and_grads(model, batch, fused: bool):
    from tuneforge.train.fused import lean_forwards
    from tuneforge.train.loss import batch_loss_sum

    model.zero_grad()
    torch.manual_seed(7)  # the same dropout masks for both
    with lean_forwards(model, lora=True, fused=fused):
        loss = batch_loss_sum(model, batch)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["all-linear"]])
def test_fused_projections_give_the_same_loss_and_gradients(tiny_model_dir, tokenizer, targets):
    from tuneforge.train.fused import fused_projections

    model = _lora_model(tiny_model_dir, targets)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = tokenizer(["a sandwich with cheese and bread, grilled in a pan until golden"])["input_ids"][0]
    batch = collate([{"input_ids": ids, "labels": ids}] * 2, tokenizer.pad_token_id)
    separate_loss, separate_grads = _loss_and_grads(model, batch, fused=False)
    fused_loss, fused_grads = _loss_and_grads(model, batch, fused=True)
    assert fused_loss == pytest.approx(separate_loss, rel=1e-6)
    assert fused_grads.keys() == separate_grads.keys()
    for name, want in separate_grads.items():
        # the input's gradient is one matmul over q, k and v's instead of a sum of three: fp32 sums in another
        # order, so the chunked-head test's tolerance (test_train.py)
        assert torch.allclose(fused_grads[name], want, rtol=1e-5, atol=1e-5 * want.abs().max().item()), name
    with fused_projections(model) as groups:
        assert groups == 2 * 2  # q/k/v and gate/up in each of 2 layers
        attention = model.base_model.model.model.layers[0].self_attn
        assert "forward" in vars(attention.k_proj)
    for name, param in model.named_parameters():  # own memory again, unchanged values, own forwards back
        assert torch.equal(param, weights[name]), name
    layer = model.base_model.model.model.layers[0]
    assert layer.self_attn.q_proj.base_layer.weight.data_ptr() != layer.self_attn.k_proj.weight.data_ptr()
    assert "forward" not in vars(layer.self_attn.k_proj) and "forward" not in vars(layer.mlp.up_proj)


def test_fused_projections_leave_trainable_and_disabled_layers_alone(tiny_model_dir, tokenizer):
    from tuneforge.train.fused import fused_projections

    full, _, _ = load_model(str(tiny_model_dir), precision="fp32")  # full fine-tuning: nothing is frozen
    with fused_projections(full) as groups:
        assert groups == 0
    model = _lora_model(tiny_model_dir, ["q_proj", "v_proj"]).eval()
    ids = torch.tensor([tokenizer("grilled cheese on rye")["input_ids"]])
    with torch.no_grad():
        with model.disable_adapter():
            want_base = model(input_ids=ids).logits
        want = model(input_ids=ids).logits
        with fused_projections(model):
            got = model(input_ids=ids).logits
            with model.disable_adapter():  # adapters off: the fused path steps aside
                base = model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5) and torch.equal(base, want_base)


@pytest.mark.parametrize(
    ("load", "cores", "want"),
    [(0.0, 2, 2), (0.3, 2, 2), (1.0, 2, 1), (1.7, 2, 1), (6.0, 2, 1), (2.2, 8, 6), (0.0, 8, 8)],
)
def test_threads_follow_the_free_cores(monkeypatch, load, cores, want):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    threads, reason = choose_threads(load=load)
    assert threads == want
    assert str(threads) in reason and (("busy" in reason) == (threads < cores))


def test_threads_asked_for_are_kept_and_a_real_reading_is_in_range(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert choose_threads(requested=2, load=5.0) == (2, "2 CPU threads (num_threads)")
    assert choose_threads(requested=1, load=0.0) == (1, "1 CPU thread (num_threads)")
    threads, reason = choose_threads(requested=64)  # kept, but said to be slower than one per core
    assert threads == 64 and "more than the 2 cores" in reason and "slower" in reason
    monkeypatch.undo()
    threads, _ = choose_threads()  # a real /proc/stat sample
    assert 1 <= threads <= len(usable_cores())


def test_a_run_drops_threads_while_other_processes_hold_cores_and_takes_them_back(monkeypatch):
    """RunThreads (fake load readings, fake clock): a slow step measures the load and drops to the free
    cores; fast steps change nothing until RECHECK_SECONDS passed, then the freed cores are taken back; a run
    whose threads were given keeps them and is told how to avoid the waits; a GPU run is left alone."""
    from tuneforge.hardware import RECHECK_SECONDS, RunThreads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    loads, now, set_to = [3.0, 0.0, 0.2], [0.0], []
    threads = RunThreads(
        4, "follow", measure=lambda: loads.pop(0), set_threads=set_to.append, clock=lambda: now[0]
    )
    assert threads.after_step(slow=False) is None and loads == [3.0, 0.0, 0.2]  # nothing measured
    said = threads.after_step(slow=True)  # 3 of 4 cores busy
    assert set_to == [1] and said.startswith("1 CPU thread from now on") and "3 of the run's 4 cores" in said
    now[0] = RECHECK_SECONDS - 1
    assert threads.after_step(slow=False) is None and set_to == [1]  # not yet looked again
    now[0] = RECHECK_SECONDS + 1
    said = threads.after_step(slow=False)
    assert set_to == [1, 4] and said.startswith("back to 4 CPU threads")
    now[0] = 10 * RECHECK_SECONDS
    assert threads.after_step(slow=False) is None and loads == [0.2]  # at the chosen count: no more looks

    given = RunThreads(4, "given", measure=lambda: 2.0, set_threads=set_to.append)
    assert given.after_step(slow=False) is None
    said = given.after_step(slow=True)  # kept, with the way out said
    assert set_to == [1, 4] and "2 of 4 free for num_threads 4" in said
    assert "OMP_WAIT_POLICY=PASSIVE" in said
    off = RunThreads(4, "off", measure=lambda: 4.0, set_threads=set_to.append)
    assert off.after_step(slow=True) is None and set_to == [1, 4]


def test_openmp_threads_spin_a_moment_unless_the_user_chose():
    """Intel OpenMP's 200 ms spin is cut to 1 ms; GNU OpenMP's bounded default is left alone, and a policy
    the user set is kept (checked in a fresh interpreter: the runtime reads these when torch loads)."""
    import subprocess
    import sys

    show = "import os, tuneforge; print(os.environ.get('KMP_BLOCKTIME'), os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k not in ("KMP_BLOCKTIME", "OMP_WAIT_POLICY")}
    plain = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True)
    assert plain.stdout.split() == ["1", "None"]
    env.update(KMP_BLOCKTIME="0", OMP_WAIT_POLICY="PASSIVE")
    chosen = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.split() == ["0", "PASSIVE"]


def test_compile_is_chosen_when_the_run_repays_it(monkeypatch):
    assert not should_compile(100, "cuda", seconds_per_step=0.5)[0]  # saves ~10 s for a ~60 s compile
    assert should_compile(5000, "cuda", seconds_per_step=0.5)[0]
    assert not should_compile(10**6, "mps")[0]
    monkeypatch.setattr("tuneforge.train.levers.shutil.which", lambda name: f"/usr/bin/{name}")
    assert not should_compile(500, "cpu", seconds_per_step=2.0)[0]  # ~65 s saved at 1.07x: not 2 compiles
    assert should_compile(100_000, "cpu", seconds_per_step=2.0)[0]  # and the loop checks it did speed up
    assert should_compile(1000, "cpu", seconds_per_step=2.0, speedup=1.3, compile_seconds=60)[0]
    monkeypatch.setattr("tuneforge.train.levers.shutil.which", lambda name: None)
    compile_now, reason = should_compile(1000, "cpu", seconds_per_step=2.0, speedup=1.3, compile_seconds=60)
    assert not compile_now and "C++ compiler" in reason


def test_compile_kind_is_amx_only_for_bf16_on_an_amx_cpu(monkeypatch):
    from tuneforge.train.levers import compile_kind

    monkeypatch.setattr("tuneforge.hardware.cpu_has_amx", lambda: True)
    assert compile_kind("cpu", "bf16") == "cpu-amx"
    assert compile_kind("cpu", "fp32") == "cpu"  # fp32 on AMX: the compiled step measured no faster
    assert compile_kind("cuda", "bf16") == "cuda"
    monkeypatch.setattr("tuneforge.hardware.cpu_has_amx", lambda: False)
    assert compile_kind("cpu", "bf16") == "cpu"


@pytest.mark.parametrize(
    ("kind", "total_steps", "compiled", "said"),
    [
        ("cpu-amx", 2_000, True, "compiled: 1997 steps"),  # 1997 x 2 s x (1 - 1/1.15) = 521 s saved
        ("cpu-amx", 40, False, "not compiled: 37 steps would save"),
        ("cpu", 100_000, True, "compiled: 99997 steps"),  # without AMX: only long runs (1.07x measured)
        ("cpu", 400, False, "not compiled: 397 steps would save ~52 s"),
        (None, 100_000, False, None),  # the user set compile, or another recipe: the loop leaves it
    ],
)
def test_the_loop_compiles_after_timing_its_first_steps_when_the_run_repays_it(
    monkeypatch, kind, total_steps, compiled, said
):
    from types import SimpleNamespace

    from tuneforge.train import loop

    monkeypatch.setattr("tuneforge.train.levers.shutil.which", lambda name: f"/usr/bin/{name}")
    calls, messages = [], []
    monkeypatch.setattr(loop, "compile_decoder_layers", lambda model: calls.append(model))
    run = SimpleNamespace(compile_kind=kind, bare_model="the model")
    progress = SimpleNamespace(message=messages.append)
    answers = [
        loop._compile_if_it_repays(run, step, total_steps, seconds, progress)  # decided at step 3 only
        for step, seconds in enumerate(([9.0], [9.0, 2.0], [9.0, 2.0, 2.0], [9.0, 2.0, 2.0, 2.0]), start=1)
    ]
    assert calls == (["the model"] if compiled else [])
    assert answers == [False, False, compiled, False]  # the loop records compiled_after from this
    if said is None:
        assert messages == []
    else:
        assert len(messages) == 1 and said in messages[0] and messages[0].startswith("after step 3: ")


@pytest.mark.parametrize(
    ("compiled_seconds", "undone", "said"),
    [
        ([1.7, 1.8, 1.7], False, "compile kept: compiled steps take 1.70 s against 2.00 s eager"),
        ([2.0, 1.9, 2.1], True, "compile undone: compiled steps take 2.00 s against 2.00 s eager"),
        # the median: one quick step decides nothing, nor does one slow spell
        ([1.5, 9.0, 2.1], True, "compile undone: compiled steps take 2.10 s"),
    ],
)
def test_the_loop_undoes_a_compile_whose_steps_are_no_faster(monkeypatch, compiled_seconds, undone, said):
    from types import SimpleNamespace

    from tuneforge.train import loop

    calls, messages = [], []
    monkeypatch.setattr(loop, "uncompile_decoder_layers", lambda model: calls.append(model))
    run = SimpleNamespace(bare_model="the model")
    progress = SimpleNamespace(message=messages.append)
    eager = [9.0, 2.0, 2.0]  # steps 1-3; compiled after step 3, and step 4 pays the compile
    times = [*eager, 60.0, *compiled_seconds, 1.0]
    answers = [
        loop._undo_compile_if_no_faster(run, step, times[:step], progress)
        for step in range(4, len(times) + 1)
    ]
    assert answers == [False, False, False, undone, False]  # judged once, after 3 compiled steps
    assert calls == (["the model"] if undone else [])
    assert len(messages) == 1 and messages[0].startswith("after step 7: ") and said in messages[0]


def test_recipe_auto_may_compile_only_when_compile_was_left_unset():
    from types import SimpleNamespace

    from tuneforge.train.setup import _may_auto_compile

    one = SimpleNamespace(num_processes=1)
    assert _may_auto_compile(RunConfig(), one)
    assert not _may_auto_compile(RunConfig(compile=False), one)  # given: the user's word wins
    assert not _may_auto_compile(RunConfig(recipe="textgen"), one)
    assert not _may_auto_compile(RunConfig(gradient_checkpointing=True), one)
    assert not _may_auto_compile(RunConfig(), SimpleNamespace(num_processes=2))


def _qlora_loss_and_grads(model_dir, batch, precision: str, peft_fp32: bool = False):
    """Loss and adapter gradients of QLoRA on the tiny model; `peft_fp32`: PEFT's prepare_model_for_kbit_training
    first (the reference: every unquantized weight cast to fp32)."""
    from transformers import AutoModelForCausalLM

    from tuneforge.hardware import torch_dtype
    from tuneforge.models.methods import prepare_for_training
    from tuneforge.models.quantization import bnb_config
    from tuneforge.train.fused import lora_linear_layers
    from tuneforge.train.loss import batch_loss_sum

    quantization = bnb_config(bits=4, compute_precision=precision)
    dtype = torch_dtype(precision)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization, dtype=dtype)
    if peft_fp32:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(0)
    config = RunConfig(method="qlora", rank=4, alpha=8, lora_dropout=0.0, target_modules=["all-linear"])
    model = prepare_for_training(model, config).train()
    for layer in lora_linear_layers(model):  # B starts at zero; give the update a part in the loss
        for lora_b in layer.lora_B.values():
            torch.nn.init.normal_(lora_b.weight, std=0.5)
    unquantized = {p.dtype for n, p in model.named_parameters() if "norm" in n or "embed" in n}
    with torch.autocast("cpu", dtype=dtype, enabled=precision != "fp32"):
        loss = batch_loss_sum(model, batch)
    loss.backward()
    grads = [p.grad.float().flatten() for _, p in sorted(model.named_parameters()) if p.requires_grad]
    return loss.item(), torch.cat(grads), unquantized


def test_qlora_keeps_unquantized_weights_in_the_compute_dtype_as_exact_as_peft_fp32(
    tiny_model_dir, tokenizer
):
    pytest.importorskip("bitsandbytes")
    ids = tokenizer(["a sandwich with cheese and bread, grilled in a pan until golden"])["input_ids"][0]
    batch = collate([{"input_ids": ids, "labels": ids}] * 2, tokenizer.pad_token_id)
    loss, grads, dtypes = _qlora_loss_and_grads(tiny_model_dir, batch, "bf16")
    peft_loss, peft_grads, peft_dtypes = _qlora_loss_and_grads(tiny_model_dir, batch, "bf16", peft_fp32=True)
    fp32_loss, fp32_grads, _ = _qlora_loss_and_grads(tiny_model_dir, batch, "fp32")
    assert dtypes == {torch.bfloat16} and peft_dtypes == {torch.float32}  # the lever is on, the reference not
    assert loss == pytest.approx(peft_loss, rel=1e-2) and loss == pytest.approx(fp32_loss, rel=1e-2)

    def error(got, want):
        return float((got - want).norm() / want.norm())

    # measured: 3% apart from PEFT's; each ~26% from fp32 compute (this tiny model amplifies bf16 rounding)
    assert error(grads, peft_grads) < 0.06
    assert error(grads, fp32_grads) <= 1.1 * error(peft_grads, fp32_grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.3])
def test_lora_dropout_in_the_compute_dtype_gives_peft_s_fp32_dropout_bit_for_bit(dtype, p):
    """A bf16/fp16 input's LoRA dropout, computed in that dtype on a CPU, equals PEFT's under quick_dropout
    (cast to the fp32 adapter, dropout, cast back): the same mask, the same generator state after it, the same
    output and gradients."""
    from tuneforge.train.dropout import drop_out
    from tuneforge.train.fused import dropout_linear

    x = torch.randn(3, 17, 24).to(dtype).requires_grad_()
    weight = torch.randn(8, 24, requires_grad=True)
    grad = torch.randn(3, 17, 8).to(dtype)

    torch.manual_seed(11)
    cast = x.float()
    dropped = drop_out(cast, p) if p > 0 else cast  # PEFT's dropout module on the cast input
    want = torch.nn.functional.linear(dropped.to(dtype), weight.to(dtype))
    want_next = torch.rand(4)
    want.backward(grad)
    want_grads = x.grad.clone(), weight.grad.clone()
    x.grad = weight.grad = None

    torch.manual_seed(11)
    got = dropout_linear(x, weight, p, dtype)
    got_next = torch.rand(4)
    got.backward(grad)
    assert torch.equal(got, want)
    assert torch.equal(got_next, want_next)  # the dropout drew exactly as many numbers
    assert torch.equal(x.grad, want_grads[0])
    assert torch.allclose(weight.grad, want_grads[1], rtol=1e-6, atol=1e-6)  # another matmul order


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
    reason="torch.compile on a CPU needs a C++ compiler",
)
def test_a_compiled_lora_run_with_dropout_gives_the_eager_losses(tiny_model_dir, lines_file, tmp_path):
    """compile: true changes how a step runs, not what it computes: the quick dropout masks are a custom op
    compile leaves alone, so a compiled LoRA run with dropout draws the eager run's masks and its losses equal
    the eager run's within bf16 rounding. (An earlier bf16 dropout, bernoulli_ on a bool mask, trained
    differently compiled — 2.3% off here, a held-out loss 3.998 -> 4.020 on the default model; this test
    caught it.)"""
    import tuneforge as tf

    losses = {}
    for compiled in (False, True):
        llm = tf.load(str(tiny_model_dir), precision="bf16")
        run = llm.train(
            lines_file,
            output_dir=str(tmp_path / str(compiled)),
            compile=compiled,
            lora_dropout=0.3,
            rank=8,
            alpha=16,
            target_modules=["all-linear"],
            max_steps=4,
            batch_size=4,
            micro_batch_size=4,
            learning_rate=1e-2,
            lr_scheduler="constant",
            warmup_ratio=0.0,
            validation_split=0,
            precision="bf16",
            recipe="textgen",
            show_progress=False,
        )
        losses[compiled] = run.losses
    assert losses[True] == pytest.approx(losses[False], rel=2e-3)


def _full_loss_and_grads(model, batch, context, dtype=torch.bfloat16):
    """Loss, gradients and what the forward pass keeps for the backward pass (storage address -> shape, dtype,
    bytes) of a full fine-tune under `dtype` autocast inside `context`."""
    from tuneforge.train.loss import batch_loss_sum

    model.zero_grad(set_to_none=True)
    kept = {}

    def keep(tensor):
        kept[tensor.untyped_storage().data_ptr()] = (
            tuple(tensor.shape),
            tensor.dtype,
            tensor.untyped_storage().nbytes(),
        )
        return tensor

    with (
        context,
        torch.autocast("cpu", dtype=dtype),
        torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t),
    ):
        loss = batch_loss_sum(model, batch)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}, kept


def _full_model_and_batch(model_dir, tokenizer):
    model, _, _ = load_model(str(model_dir), precision="fp32")
    model.train()
    ids = tokenizer(["a sandwich with cheese and bread, grilled in a pan until golden"])["input_ids"][0]
    return model, collate([{"input_ids": ids, "labels": ids}] * 2, tokenizer.pad_token_id)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_full_fine_tune_recasts_its_weights_in_the_backward_pass_with_the_same_gradients(
    tiny_model_dir, tokenizer, dtype
):
    from tuneforge.train.recast import recast_linears, trainable_linears

    model, batch = _full_model_and_batch(tiny_model_dir, tokenizer)
    kept_loss, kept_grads, kept = _full_loss_and_grads(model, batch, nullcontext(), dtype=dtype)
    recast_loss, recast_grads, recast = _full_loss_and_grads(model, batch, recast_linears(model), dtype=dtype)
    kept_low, recast_low = (
        sum(size for _, kind, size in saved.values() if kind == dtype) for saved in (kept, recast)
    )
    assert recast_loss == kept_loss
    for name, want in kept_grads.items():
        assert torch.equal(recast_grads[name], want), name
    # autocast kept a low-precision copy of each decoder layer's linear weight; the recast keeps none (the
    # head's own loss function casts it: train/loss.py)
    head = model.get_output_embeddings()
    cast_weights = sum(layer.weight.numel() * 2 for layer in trainable_linears(model) if layer is not head)
    assert kept_low - recast_low >= cast_weights > 0
    assert all("forward" not in vars(layer) for layer in trainable_linears(model))  # own forwards back


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_full_fine_tune_s_lean_block_keeps_no_mlp_product_nor_fp32_layer_inputs_with_the_same_gradients(
    tiny_model_dir, tokenizer, dtype
):
    """The lean forwards of a run on one process (lean_mlp with recast_linears and lean_norms): the down
    projection makes silu(gate) * up again in the backward pass, and the q/k/v and gate/up projections keep one
    shared low-precision copy of their input, not the fp32 input."""
    from tuneforge.train.fused import lean_forwards

    model, batch = _full_model_and_batch(tiny_model_dir, tokenizer)
    want_loss, want, _ = _full_loss_and_grads(model, batch, nullcontext(), dtype=dtype)
    loss, grads, saved = _full_loss_and_grads(model, batch, lean_forwards(model), dtype=dtype)
    assert loss == want_loss
    for name, grad in want.items():
        assert torch.equal(grads[name], grad), name
    kept = [(shape, kind) for shape, kind, _ in saved.values()]
    config = model.config
    tokens = tuple(batch["input_ids"].shape)
    layers = config.num_hidden_layers
    # gate(x) and up(x) a layer, no product; the fp32 residual stream into each RMSNorm (two a layer and the
    # final one), no fp32 norm output
    assert kept.count((tokens + (config.intermediate_size,), dtype)) == 2 * layers
    assert kept.count((tokens + (config.hidden_size,), torch.float32)) == 2 * layers + 1
