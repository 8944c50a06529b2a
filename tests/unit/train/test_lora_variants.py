"""rsLoRA and DoRA (PEFT's use_rslora, use_dora): each trains, saves and loads back as PEFT writes it."""

import json

import pytest
import torch

import tuneforge as tf

SETTINGS = dict(
    rank=4,
    alpha=8,
    target_modules=["all-linear"],
    learning_rate=1e-2,
    batch_size=4,
    micro_batch_size=2,
    lr_scheduler="constant",
    precision="fp32",
    recipe="textgen",
    max_steps=8,
    seed=3,
    show_progress=False,
)


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def logits(llm, text="you can make a small cheese sandwich"):
    with torch.no_grad():
        return llm.model(**llm.tokenizer(text, return_tensors="pt")).logits


def test_rslora_scales_the_update_by_alpha_over_the_root_of_rank(tiny_model_dir, lines_file, tmp_path):
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    llm.train(lines_file, output_dir=str(tmp_path / "rs"), use_rslora=True, **SETTINGS)
    layer = llm.model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)  # 4.0, where plain LoRA's is 8 / 4
    assert json.loads((tmp_path / "rs" / "adapter" / "adapter_config.json").read_text())["use_rslora"]
    reloaded = tf.load(str(tiny_model_dir), precision="fp32", adapter=tmp_path / "rs")
    assert torch.allclose(logits(reloaded), logits(llm), atol=1e-5)


def test_dora_trains_its_magnitudes_and_loads_back_with_the_same_logits(tiny_model_dir, lines_file, tmp_path):
    runs = {}
    for lean in (True, False):  # DoRA layers keep PEFT's forward under the lean LoRA lever: the same losses
        llm = tf.load(str(tiny_model_dir), precision="fp32")
        run_dir = tmp_path / f"dora-{lean}"
        llm.train(lines_file, output_dir=str(run_dir), use_dora=True, lean_layers=lean, **SETTINGS)
        runs[lean] = (llm, run_dir)
    llm, run_dir = runs[True]
    assert losses(run_dir) == pytest.approx(losses(runs[False][1]), rel=1e-5)
    assert losses(run_dir)[-1] < losses(run_dir)[0] - 0.05
    trained = [n for n, p in llm.model.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in trained)
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["use_dora"] and not saved["use_rslora"]
    assert "target_modules all-linear, DoRA, learning_rate" in (run_dir / "report.md").read_text()
    reloaded = tf.load(str(tiny_model_dir), precision="fp32", adapter=run_dir)
    assert torch.allclose(logits(reloaded), logits(llm), atol=1e-5)
    # the adapter's kind is its shape: a run training it further keeps it, and another is refused
    again = tf.load(str(tiny_model_dir), precision="fp32")
    with pytest.raises(Exception, match="has use_dora True but use_dora False was asked for"):
        again.train(
            lines_file,
            output_dir=str(tmp_path / "no"),
            from_adapter=str(run_dir),
            use_dora=False,
            max_steps=1,
        )


def test_loraplus_trains_the_b_matrices_at_ratio_times_the_rate_all_through_the_schedule(
    tiny_model_dir, lines_file, tmp_path
):
    from tuneforge.config import RunConfig
    from tuneforge.models.methods import prepare_for_training
    from tuneforge.train.optim import build_optimizer, build_scheduler

    config = RunConfig(
        rank=4, alpha=8, target_modules=["all-linear"], learning_rate=1e-3, loraplus_lr_ratio=16
    )
    model = prepare_for_training(tf.load(str(tiny_model_dir), precision="fp32").model, config)
    optimizer = build_optimizer(model, config)
    b_matrices = {id(p) for n, p in model.named_parameters() if "lora_B" in n}
    faster = [g for g in optimizer.param_groups if {id(p) for p in g["params"]} == b_matrices]
    assert len(faster) == 1 and faster[0]["lr"] == pytest.approx(16e-3)
    assert all(g["lr"] == pytest.approx(1e-3) for g in optimizer.param_groups if g is not faster[0])
    scheduler = build_scheduler(
        optimizer, config.replace(warmup_steps=2, lr_scheduler="linear"), total_steps=10
    )
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        rates = [g["lr"] for g in optimizer.param_groups]
        assert max(rates) == pytest.approx(16 * min(rates))
    # a run with it moves B further from its start (zero) than one without, from the same first step
    runs = {}
    for ratio in (None, 16.0):
        llm = tf.load(str(tiny_model_dir), precision="fp32")
        llm.train(lines_file, output_dir=str(tmp_path / f"r{ratio}"), loraplus_lr_ratio=ratio, **SETTINGS)
        norms = [p.norm() for n, p in llm.model.named_parameters() if "lora_B" in n]
        runs[ratio] = (losses(tmp_path / f"r{ratio}"), float(torch.stack(norms).sum()))
    assert runs[None][0][0] == pytest.approx(runs[16.0][0][0], rel=1e-6)  # the same first loss
    assert runs[16.0][1] > 3 * runs[None][1]
