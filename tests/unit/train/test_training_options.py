"""Every training knob the seeds name does what it says, on the tiny random model."""

import json

import pytest
import torch

import tuneforge as tf
from tuneforge.config import RunConfig, load_config
from tuneforge.errors import ConfigError
from tuneforge.evaluate.curves import diagnose_fit
from tuneforge.train.optim import build_optimizer, build_scheduler, warmup_steps

BASE = dict(
    learning_rate=3e-2,
    batch_size=8,
    micro_batch_size=8,
    rank=4,
    alpha=8,
    lora_dropout=0.0,
    target_modules=["all-linear"],
    precision="fp32",
    max_steps=6,
    recipe="textgen",  # fixed settings: no validation split or packing chosen from the data
)


def train(tiny_model_dir, lines_file, tmp_path, **settings):
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    run = llm.train(lines_file, output_dir=str(tmp_path / "run"), show_progress=False, **{**BASE, **settings})
    return llm, run


@pytest.mark.parametrize("optimizer", ["adamw_torch", "sgd", "adafactor"])
def test_each_optimizer_lowers_the_loss(tiny_model_dir, lines_file, tmp_path, optimizer):
    rate = {"sgd": 1.0, "adafactor": 3e-2}.get(optimizer, 3e-2)
    _, run = train(
        tiny_model_dir, lines_file, tmp_path, optimizer=optimizer, learning_rate=rate, max_steps=10
    )
    assert run.final_loss < run.losses[0]


def test_warmup_ratio_sets_the_warmup_steps():
    assert warmup_steps(RunConfig(warmup_ratio=0.1), 50) == 5
    assert warmup_steps(RunConfig(warmup_steps=3, warmup_ratio=0.5), 50) == 3
    # a warm-up's first step runs at rate 0: a ratio never warms up a run's every step (1 step: none at all)
    assert warmup_steps(RunConfig(warmup_ratio=0.05), 1) == 0
    assert warmup_steps(RunConfig(warmup_ratio=1.0), 4) == 3


@pytest.mark.parametrize(
    "name",
    [
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
    ],
)
def test_every_scheduler_builds_and_warms_up(name):
    parameter = torch.nn.Parameter(torch.zeros(2))
    config = RunConfig(lr_scheduler=name, warmup_steps=4, learning_rate=1.0)
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = build_scheduler(optimizer, config, total_steps=20)
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] < rates[4]  # warm-up rises (first step below the peak)
    assert max(rates) <= 1.0 + 1e-9


def test_modules_to_save_and_layers_to_transform(tiny_model_dir, lines_file, tmp_path):
    llm, _ = train(
        tiny_model_dir,
        lines_file,
        tmp_path,
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=[1],
        modules_to_save=["lm_head"],
    )
    names = [n for n, p in llm.model.named_parameters() if p.requires_grad]
    assert any("layers.1.self_attn.q_proj.lora_A" in n for n in names)
    assert not any("layers.0." in n for n in names)
    assert any("modules_to_save" in n for n in names), names  # lm_head (tied: stored with embed_tokens)


def test_unknown_target_module_lists_the_real_ones(tiny_model_dir, lines_file, tmp_path):
    with pytest.raises(tf.TuneforgeError, match="q_proj"):
        train(tiny_model_dir, lines_file, tmp_path, target_modules=["query_key_value"])


def test_gradient_checkpointing_gives_the_same_losses(tiny_model_dir, lines_file, tmp_path):
    _, plain = train(tiny_model_dir, lines_file, tmp_path / "a", max_steps=3)
    _, checkpointed = train(
        tiny_model_dir, lines_file, tmp_path / "b", max_steps=3, gradient_checkpointing=True
    )
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-4)


def test_early_stopping_on_validation_loss(tiny_model_dir, lines_file, tmp_path):
    _, run = train(
        tiny_model_dir,
        lines_file,
        tmp_path,
        max_steps=60,
        learning_rate=0.5,
        eval_steps=1,
        validation_split=0.25,
        early_stopping_patience=2,
        optimizer="sgd",
    )
    assert run.steps < 60 and "early stopping" in run.stopped_because


def test_copy_parameters_from_an_earlier_run(tmp_path):
    (tmp_path / "earlier").mkdir()
    RunConfig(rank=8, alpha=16, learning_rate=1e-3, output_dir=str(tmp_path / "earlier")).save(
        tmp_path / "earlier" / "config.yaml"
    )
    config = load_config(None, {"copy_parameters_from": str(tmp_path / "earlier"), "learning_rate": "2e-3"})
    assert config.rank == 8 and config.alpha == 16 and config.learning_rate == 2e-3
    assert config.output_dir is None  # the run folder is never inherited


def test_report_to_tensorboard_writes_events(tiny_model_dir, lines_file, tmp_path):
    _, run = train(tiny_model_dir, lines_file, tmp_path, max_steps=2, report_to=["tensorboard"])
    assert list((run.run_dir / "trackers").rglob("events.out.tfevents.*"))


def test_loss_curve_and_fit_diagnosis_in_the_report(tiny_model_dir, lines_file, tmp_path):
    _, run = train(tiny_model_dir, lines_file, tmp_path, max_steps=8, validation_split=0.25, eval_steps=2)
    assert (run.run_dir / "loss_curve.png").stat().st_size > 1000
    report = (run.run_dir / "report.md").read_text()
    assert "- fit: **" in report and "validation loss" in report
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum("validation_loss" in r for r in records) == 4


def test_a_short_runs_loss_curve_marks_whole_steps(tmp_path, monkeypatch):
    from tuneforge.evaluate.curves import plot_loss_curve

    figures = []
    monkeypatch.setattr("matplotlib.pyplot.close", figures.append)
    plot_loss_curve([3.0, 2.5, 2.2], [(3, 2.6)], tmp_path / "curve.png")
    ticks = [tick for tick in figures[0].axes[0].get_xticks() if 1 <= tick <= 3]
    assert ticks and all(tick == int(tick) for tick in ticks)


def test_fit_diagnosis_follows_seed_002():
    flat = [5.0] * 20
    assert diagnose_fit(flat, [])[0] == "underfit"
    falling = [5.0 - 0.2 * i for i in range(20)]
    assert diagnose_fit(falling, [])[0] == "underfit"  # still falling at the end: train longer
    # ... unless memorising: without validation losses to compare the advice says it cannot tell
    assert "cannot be told from memorising" in diagnose_fit(falling, [])[1]
    falling_validation = [(5, 4.0), (10, 3.5), (15, 3.0), (20, 2.6)]
    assert "memorising" not in diagnose_fit(falling, falling_validation)[1]
    settled = [5.0 * 0.7**i + 1.0 for i in range(40)]
    overfit_validation = [(10, 2.0), (20, 1.6), (30, 1.9), (40, 2.3)]
    assert diagnose_fit(settled, overfit_validation)[0] == "overfit"
    assert diagnose_fit(settled, [(10, 1.6), (20, 1.2), (30, 1.15), (40, 1.14)])[0] == "well-fit"


def test_scratch_builds_a_new_model_with_a_trained_tokenizer(tiny_model_dir, lines_file, tmp_path):
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    run = llm.train(
        lines_file,
        method="scratch",
        tokenizer="train",
        vocab_size=300,
        n_layer=1,
        n_head=2,
        n_embd=16,
        n_positions=64,
        cutoff_len=64,
        overlap_len=0,
        learning_rate=1e-2,
        batch_size=8,
        micro_batch_size=8,
        max_steps=15,
        output_dir=str(tmp_path / "run"),
        show_progress=False,
    )
    assert len(run.tokenizer) == 300
    assert llm.model.config.model_type == "gpt2" and llm.model.config.n_embd == 16
    assert run.final_loss < run.losses[0]
    reloaded = tf.load(str(run.saved_to), precision="fp32")
    assert len(reloaded.tokenizer) == 300


def test_a_mistyped_target_module_is_refused_before_the_run_folder_exists(tiny_llm, lines_file, tmp_path):
    from tuneforge.errors import ModelError

    with pytest.raises(
        ModelError, match=r"modules \['q_projj'\] are not in this model; it has linear layers"
    ):
        tiny_llm.train(
            lines_file, target_modules=["q_projj"], output_dir=str(tmp_path / "run"), show_progress=False
        )
    assert not (tmp_path / "run").exists()  # not a folder holding only the failed run's config.yaml


def test_examples_longer_than_learned_positions_are_refused_before_training(tiny_model_dir, tmp_path):
    """input_output data is bounded by source_max_len + target_max_len (QLoRA's recipe), not cutoff_len; on a
    GPT-2 with 64 positions a 120-token example failed inside the forward pass."""
    pairs = [{"input": "say " * 80, "output": "ok " * 40} for _ in range(4)]
    (tmp_path / "io.jsonl").write_text("\n".join(json.dumps(pair) for pair in pairs))
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    scratch = dict(method="scratch", n_layer=1, n_head=2, n_embd=16, n_positions=64, cutoff_len=64)
    with pytest.raises(
        ConfigError, match="has 12[0-9] tokens but the model has 64 positions.*raise n_positions"
    ):
        llm.train(
            tmp_path / "io.jsonl",
            **scratch,
            recipe="textgen",
            max_steps=1,
            output_dir=str(tmp_path / "run"),
            show_progress=False,
        )
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_optimizer_skips_weight_decay_for_norms_and_biases(tiny_model_dir):
    from tuneforge.models.loading import load_model

    model, _, _ = load_model(str(tiny_model_dir), precision="fp32")
    optimizer = build_optimizer(model, RunConfig(weight_decay=0.1))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_adapters_on_a_quantized_base_that_stays_unchanged(
    tiny_model_dir, lines_file, tmp_path, bits
):
    from tuneforge.models.adapters import count_parameters
    from tuneforge.models.kind import is_quantized

    llm = tf.load(str(tiny_model_dir), precision="fp32")
    run = llm.train(
        lines_file,
        method="qlora",
        bits=bits,
        output_dir=str(tmp_path / "run"),
        show_progress=False,
        **{**BASE, "target_modules": ["q_proj", "v_proj", "up_proj"], "max_steps": 8},
    )
    assert is_quantized(llm.model.get_base_model())
    assert run.final_loss < run.losses[0]
    # every weight counted once, a packed 4-bit one as the weights it holds (not its bytes): as unquantized
    unquantized = tf.load(str(tiny_model_dir), precision="fp32").model
    lora_weights = count_parameters(llm.model)[0]
    assert count_parameters(llm.model)[1] - lora_weights == count_parameters(unquantized)[1]
    quantized = {n: p.detach().clone() for n, p in llm.model.named_parameters() if "base_layer" in n}
    assert quantized and all(
        not p.requires_grad for n, p in llm.model.named_parameters() if "base_layer" in n
    )
    llm.train(
        lines_file,
        method="qlora",
        bits=bits,
        output_dir=str(tmp_path / "run2"),
        show_progress=False,
        **{**BASE, "target_modules": ["q_proj", "v_proj", "up_proj"], "max_steps": 2},
    )
    for name, before in quantized.items():
        assert torch.equal(dict(llm.model.named_parameters())[name].detach(), before), name
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_gallery_records_each_checkpoint(tiny_model_dir, lines_file, tmp_path):
    _, run = train(
        tiny_model_dir,
        lines_file,
        tmp_path,
        max_steps=4,
        save_steps=2,
        compare_at_save=True,
        sample_prompts=["you can"],
        validation_split=0.25,
    )
    gallery = (run.run_dir / "gallery.md").read_text()
    assert "step 2" in gallery and "step 4" in gallery and "you can" in gallery


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_compile_gives_the_eager_losses_without_recompiling_after_warm_up(tiny_model_dir, tmp_path, method):
    import torch._dynamo

    if method == "qlora":
        from bitsandbytes.functional import has_avx512bf16

        if has_avx512bf16():
            pytest.skip(
                "a 4-bit base is not compiled on a CPU with AVX512-BF16 (train/setup.why_not_compiled)"
            )

    text = tmp_path / "same_length.txt"  # raw text: every chunk is cutoff_len tokens, so shapes never change
    text.write_text(" ".join(f"cheese number {i} melts on bread." for i in range(400)))
    settings = dict(
        format="raw",
        cutoff_len=64,
        overlap_len=0,
        batch_size=4,
        micro_batch_size=2,
        max_steps=6,
        learning_rate=1e-2,
        rank=4,
        alpha=8,
        lora_dropout=0.0,
        # full: under bf16 autocast, so the compiled blocks run train/recast.py's linear layers
        precision="bf16" if method == "full" else "fp32",
        validation_split=0,
        method=method,  # qlora: bitsandbytes' 4-bit matmuls inside the compiled blocks
    )
    eager = tf.load(str(tiny_model_dir), precision="fp32").train(
        str(text), output_dir=str(tmp_path / "eager"), show_progress=False, **settings
    )
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # graphs earlier tests compiled stay counted otherwise
    from tuneforge.train import fused, recast

    fused._SILU_MUL = fused._DROPOUT_LINEAR = None  # as in a fresh process, where compile meets them first
    recast._RECAST_LINEAR = None
    graphs = []

    def count_graphs_before_the_first_block(module, args):  # QLoRA trains a model it loads quantized itself
        if type(module).__name__.endswith("DecoderLayer") and module.self_attn.layer_idx == 0:
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])

    hook = torch.nn.modules.module.register_module_forward_pre_hook(count_graphs_before_the_first_block)
    compiled = tf.load(str(tiny_model_dir), precision="fp32").train(
        str(text), output_dir=str(tmp_path / "compiled"), show_progress=False, compile=True, **settings
    )
    hook.remove()
    # under bf16 autocast (full) inductor runs a chain of elementwise ops in fp32 and rounds once, where eager
    # rounds to bf16 after each: on an Intel Xeon with AMX step 3's loss moved by 1.3e-4
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4 if method != "full" else 5e-4)
    assert graphs[-1] > 0  # it did compile
    # one graph for the first block (its input needs no gradient), one shared by the others: no graph breaks
    assert graphs[-1] <= 2
    assert graphs[4] == graphs[-1]  # nothing compiled after step 2 (4 micro batches)


@pytest.mark.parametrize("undone", [False, True])
def test_recipe_auto_compiles_mid_run_when_it_repays_and_keeps_the_eager_losses(
    tiny_model_dir, tmp_path, monkeypatch, undone
):
    """The loop's own decision (here forced: the tiny model's run is too short to repay a compile) compiles
    the blocks after step 3, inside the lean forwards, without changing the losses; the report says so. When
    the compiled steps are judged no faster (forced too), the blocks run eager again after step 7."""
    import torch._dynamo

    from tuneforge.train import fused, loop

    text = tmp_path / "same_length.txt"
    text.write_text(" ".join(f"cheese number {i} melts on bread." for i in range(400)))
    settings = dict(
        format="raw", cutoff_len=64, overlap_len=0, batch_size=4, micro_batch_size=2,
        learning_rate=1e-2, rank=4, alpha=8, lora_dropout=0.0, precision="fp32", validation_split=0,
        max_steps=8 if undone else 6,
    )  # fmt: skip
    eager = tf.load(str(tiny_model_dir), precision="fp32").train(
        str(text), output_dir=str(tmp_path / "eager"), show_progress=False, compile=False, **settings
    )
    torch._dynamo.reset()
    fused._SILU_MUL = fused._DROPOUT_LINEAR = None
    monkeypatch.setattr(
        loop, "should_compile", lambda *args, **kwargs: (True, "compiled: forced by the test")
    )
    if undone:
        monkeypatch.setattr(loop, "compile_kept", lambda *args: (False, "compile undone: forced by the test"))
    graphs = []
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    layers = llm.model.model.layers
    hook = layers[0].register_forward_pre_hook(
        lambda module, args: graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    )
    auto = llm.train(str(text), output_dir=str(tmp_path / "auto"), show_progress=False, **settings)
    hook.remove()
    assert auto.compiled_after == 3
    # eager for steps 1-3 (6 micro batches: no new graph), compiled after (counters outlive dynamo's reset)
    assert graphs[5] == graphs[0] and graphs[-1] > graphs[5]
    assert auto.losses == pytest.approx(eager.losses, rel=1e-4)
    report = (tmp_path / "auto" / "report.md").read_text()
    if undone:
        assert auto.compile_undone_after == 7
        assert all(layer._compiled_call_impl is None for layer in layers)
        assert "tried after step 3, undone after step 7" in report
    else:
        assert auto.compile_undone_after is None
        assert "compile on after step 3" in report


def test_a_4bit_base_is_not_compiled_on_a_cpu_where_bitsandbytes_repacks_its_weights(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    import bitsandbytes.functional

    from tuneforge.train import setup

    monkeypatch.setattr(bitsandbytes.functional, "has_avx512bf16", lambda: True)
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    assert setup.why_not_compiled(llm.model, "cpu") is None  # not quantized
    with pytest.warns(UserWarning, match="compile: true not applied: bitsandbytes changes a 4-bit weight"):
        run = llm.train(
            lines_file,
            method="qlora",
            compile=True,
            max_steps=1,
            validation_split=0,  # bitsandbytes' CPU repacking fails on this 32-wide model's shapes
            output_dir=str(tmp_path / "run"),
            show_progress=False,
        )
    assert run.steps == 1 and run.compiled_after is None
    assert all(block._compiled_call_impl is None for block in llm.model.get_base_model().model.layers)
    monkeypatch.setattr(bitsandbytes.functional, "has_avx512bf16", lambda: False)
    assert (
        setup.why_not_compiled(llm.model, "cpu") is None and setup.why_not_compiled(llm.model, "cuda") is None
    )


def test_neftune_noises_the_training_passes_and_a_resumed_run_draws_the_same_noise(
    tiny_model_dir, lines_file, tmp_path
):
    from tests.unit.train.test_resume import losses, simulate_crash_after

    settings = dict(BASE, validation_split=4, eval_steps=2, save_steps=2, seed=5)
    runs = {}
    for alpha in (None, 5.0):
        llm = tf.load(str(tiny_model_dir), precision="fp32")
        folder = tmp_path / f"alpha-{alpha}"
        llm.train(
            lines_file, output_dir=str(folder), neftune_noise_alpha=alpha, show_progress=False, **settings
        )
        runs[alpha] = (llm, folder)
    plain, noisy = losses(runs[None][1]), losses(runs[5.0][1])
    assert plain[0] != pytest.approx(noisy[0], rel=1e-6)  # step 1's forward pass already had the noise
    # the hook is gone after the run: a model in training mode gives the same logits twice
    model = runs[5.0][0].model.train()
    ids = runs[5.0][0].tokenizer("you can make a sandwich", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
    # the noise comes from the RNG a checkpoint keeps: an interrupted run resumes to the same losses
    whole = runs[5.0][1]
    broken = tmp_path / "broken"
    tf.load(str(tiny_model_dir), precision="fp32").train(
        lines_file, output_dir=str(broken), neftune_noise_alpha=5.0, show_progress=False, **settings
    )
    simulate_crash_after(broken, 2)
    tf.load(str(tiny_model_dir), precision="fp32").train(
        config=broken / "config.yaml", resume_from="latest", show_progress=False
    )
    assert losses(broken) == pytest.approx(losses(whole), rel=1e-5)
