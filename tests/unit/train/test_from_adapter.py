"""from_adapter: a new run trains a saved LoRA adapter further (seed 003's "resume a prior run" with edited
parameters), keeping its shape; the learning rate and steps start over."""

import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tuneforge as tf
from tests.unit.train.test_resume import losses, simulate_crash_after
from tuneforge.errors import TuneforgeError
from tuneforge.models.adapters import adapter_source

SETTINGS = dict(
    learning_rate=1e-2,
    batch_size=4,
    micro_batch_size=2,
    lr_scheduler="linear",
    lora_dropout=0.1,
    precision="fp32",
    recipe="textgen",  # fixed settings: no validation split or packing chosen from the data
    seed=3,
    show_progress=False,
)


@pytest.fixture(scope="module")
def earlier_run(tiny_model_dir, tmp_path_factory):
    """A finished 8-step LoRA run (rank 4, all linear layers) on the cheese lines."""
    from tests.conftest import SHARED_DATA
    from tuneforge.data.spintax import expand

    folder = tmp_path_factory.mktemp("earlier")
    data = folder / "cheese.txt"
    data.write_text("\n".join(expand((SHARED_DATA / "cheese_instructions.txt").read_text(), 60)))
    tf.load(str(tiny_model_dir), precision="fp32").train(
        data,
        output_dir=str(folder / "run"),
        rank=4,
        alpha=8,
        target_modules=["all-linear"],
        max_steps=8,
        **SETTINGS,
    )
    return folder / "run", data


def test_a_run_from_a_saved_adapter_starts_where_it_ended_and_keeps_its_shape(
    tiny_model_dir, earlier_run, tmp_path
):
    run_dir, data = earlier_run
    further, fresh = tmp_path / "further", tmp_path / "fresh"
    # the run folder is enough: its adapter/ is the one trained further
    tf.load(str(tiny_model_dir), precision="fp32").train(
        data, output_dir=str(further), from_adapter=str(run_dir), max_steps=3, **SETTINGS
    )
    tf.load(str(tiny_model_dir), precision="fp32").train(
        data, output_dir=str(fresh), rank=4, alpha=8, target_modules=["all-linear"], max_steps=3, **SETTINGS
    )
    earlier = losses(run_dir)
    # the same first batch: a fresh adapter starts at the base's loss, the earlier one's where it ended
    assert losses(fresh)[0] == pytest.approx(earlier[0], rel=1e-5)
    assert losses(further)[0] < earlier[-1] + 0.05 < earlier[0] - 0.3
    saved = yaml.safe_load((further / "config.yaml").read_text())
    assert (saved["rank"], saved["alpha"], saved["from_adapter"]) == (4, 8, str(run_dir / "adapter"))
    # PEFT saved all-linear as each module's path; the config says it in module names
    assert saved["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    before = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    after = load_file(str(further / "adapter" / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_a_run_from_a_saved_adapter_resumes_as_the_uninterrupted_run(tiny_model_dir, earlier_run, tmp_path):
    run_dir, data = earlier_run
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    settings = dict(SETTINGS, from_adapter=str(run_dir / "adapter"), max_steps=4, save_steps=2)
    for folder in (whole, broken):
        tf.load(str(tiny_model_dir), precision="fp32").train(data, output_dir=str(folder), **settings)
    simulate_crash_after(broken, 2)
    run = tf.load(str(tiny_model_dir), precision="fp32").train(
        config=broken / "config.yaml", resume_from="latest", show_progress=False
    )
    assert run.resumed_from.name == "step-2"
    assert losses(broken) == pytest.approx(losses(whole), rel=1e-5)


def test_what_from_adapter_cannot_train_is_refused_with_what_to_do(tiny_model_dir, earlier_run, tmp_path):
    run_dir, data = earlier_run
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    cases = [
        (
            dict(rank=8),
            "adapter in .*adapter has rank 4 but rank 8 was asked for; a LoRA's rank cannot change",
        ),
        (dict(method="full"), "from_adapter trains a LoRA adapter further, but method is full"),
        (dict(from_adapter=str(tmp_path / "nowhere")), "from_adapter '.*nowhere' does not exist"),
        (dict(from_adapter=str(tiny_model_dir)), "holds a whole model .*: load it as the model instead"),
        (dict(bias="lora_only"), "has bias 'none' but bias 'lora_only' was asked for"),
        (dict(modules_to_save=["lm_head"]), r"has modules_to_save \[\] but modules_to_save \['lm_head'\]"),
        (dict(output_dir=str(run_dir)), "is the adapter of this run's own output_dir"),
        (
            dict(from_adapter=str(run_dir.parent / "stopped")),
            r"did not finish: pass its newest checkpoint, .*step-4",
        ),
    ]
    stopped = run_dir.parent / "stopped" / "checkpoints"
    for step in (2, 4):
        shutil.copytree(run_dir / "adapter", stopped / f"step-{step}" / "adapter", dirs_exist_ok=True)
    for extra, message in cases:
        settings = {"output_dir": str(tmp_path / "refused"), **SETTINGS, "from_adapter": str(run_dir)}
        with pytest.raises(TuneforgeError, match=message):
            llm.train(data, **{**settings, "max_steps": 1, **extra})
        assert not (tmp_path / "refused").exists()  # refused before the run folder
    llm.load_adapter(run_dir / "adapter")
    with pytest.raises(TuneforgeError, match="an adapter .* is already attached"):
        llm.train(data, output_dir=str(tmp_path / "refused"), from_adapter=str(run_dir), max_steps=1)


def test_a_given_lora_dropout_trains_and_is_saved_with_the_adapter(tiny_model_dir, earlier_run, tmp_path):
    """Training settings are the run's: only the adapter's shape carries over."""
    import json

    run_dir, data = earlier_run
    tf.load(str(tiny_model_dir), precision="fp32").train(
        data,
        output_dir=str(tmp_path / "run"),
        from_adapter=str(run_dir),
        max_steps=1,
        **{**SETTINGS, "lora_dropout": 0.0},
    )
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert (
        saved["lora_dropout"] == 0.0
        and yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["lora_dropout"] == 0.0
    )


def test_resuming_with_another_from_adapter_says_which_one_the_run_started_from(
    tiny_model_dir, earlier_run, tmp_path
):
    run_dir, data = earlier_run
    broken = tmp_path / "broken"
    settings = dict(SETTINGS, max_steps=4, save_steps=2)
    tf.load(str(tiny_model_dir), precision="fp32").train(
        data, output_dir=str(broken), from_adapter=str(run_dir), **settings
    )
    simulate_crash_after(broken, 2)
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    with pytest.raises(
        TuneforgeError, match=r"the run started from the adapter in .*earlier.*adapter; give from_adapter"
    ):
        llm.train(data, output_dir=str(broken), resume_from="latest", **settings)
    # a run with an adapter of its own, resumed "from" another adapter: the checkpoint's weights would win
    tf.load(str(tiny_model_dir), precision="fp32").train(
        data, output_dir=str(tmp_path / "own"), rank=4, alpha=8, target_modules=["all-linear"], **settings
    )
    simulate_crash_after(tmp_path / "own", 2)
    with pytest.raises(
        TuneforgeError, match="does not go with resume_from; to start a new run from that adapter"
    ):
        llm.train(
            data,
            output_dir=str(tmp_path / "own"),
            resume_from="latest",
            from_adapter=str(run_dir),
            allow_resume_mismatch=True,
            **settings,
        )


def test_an_adapter_of_another_base_gets_a_warning(tiny_model_dir, earlier_run, tmp_path):
    import json

    run_dir, data = earlier_run
    shutil.copytree(run_dir / "adapter", tmp_path / "other")
    saved = json.loads((tmp_path / "other" / "adapter_config.json").read_text())
    json.dump(
        {**saved, "base_model_name_or_path": "Qwen/Qwen2.5-0.5B"},
        (tmp_path / "other" / "adapter_config.json").open("w"),
    )
    with pytest.warns(UserWarning, match="was trained on Qwen/Qwen2.5-0.5B, and this run's model is"):
        tf.load(str(tiny_model_dir), precision="fp32").train(
            data,
            output_dir=str(tmp_path / "run"),
            from_adapter=str(tmp_path / "other"),
            max_steps=1,
            **SETTINGS,
        )


def test_training_a_loaded_adapter_records_where_it_started_and_reruns_the_same(
    tiny_model_dir, earlier_run, tmp_path
):
    run_dir, data = earlier_run
    llm = tf.load(str(tiny_model_dir), adapter=str(run_dir), precision="fp32")
    llm.train(data, output_dir=str(tmp_path / "loaded"), max_steps=3, **SETTINGS)
    saved = yaml.safe_load((tmp_path / "loaded" / "config.yaml").read_text())
    assert saved["from_adapter"] == str(run_dir / "adapter")
    # the saved config makes the same run again: the same losses from the same starting weights
    tf.load(str(tiny_model_dir), precision="fp32").train(
        config=str(tmp_path / "loaded" / "config.yaml"),
        output_dir=str(tmp_path / "again"),
        show_progress=False,
    )
    assert losses(tmp_path / "again") == pytest.approx(losses(tmp_path / "loaded"), rel=1e-5)
    # a second train() continues the adapter the first one saved
    llm.train(data, output_dir=str(tmp_path / "second"), max_steps=2, **SETTINGS)
    second = yaml.safe_load((tmp_path / "second" / "config.yaml").read_text())
    assert second["from_adapter"] == str(tmp_path / "loaded" / "adapter")
    with pytest.raises(TuneforgeError, match="already attached"):
        llm.train(data, output_dir=str(tmp_path / "other"), from_adapter=str(run_dir), **SETTINGS)
    # a saved adapter deleted since (HappyTransformer's temporary run folder) is not named as where a run started
    shutil.rmtree(tmp_path / "second")
    assert adapter_source(llm.model) is None
