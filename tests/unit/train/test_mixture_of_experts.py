"""A mixture of experts trains with recipe auto's LoRA: PEFT puts LoRA on the fused expert weights of
transformers 5's MoE models only without dropout, so recipe auto chooses lora_dropout 0 for them, and a dropout
given is refused naming the fix.

python -m pytest tests/unit/train/test_mixture_of_experts.py -q
"""

import pytest

from tests.conftest import save_tiny_model
from tuneforge.config import load_config
from tuneforge.defaults import ModelFacts
from tuneforge.errors import ModelError


def _tiny_moe(model_type, folder, tokenizer):
    return save_tiny_model(model_type, folder, tokenizer, num_local_experts=4, num_experts_per_tok=2)


@pytest.fixture(scope="module")
def tiny_mixtral_dir(tmp_path_factory, tokenizer):
    return _tiny_moe("mixtral", tmp_path_factory.mktemp("tiny-mixtral"), tokenizer)


def test_recipe_auto_trains_a_mixture_of_experts_with_lora_on_its_experts_without_dropout(
    tiny_mixtral_dir, lines_file, tmp_path
):
    import tuneforge as tf

    assert ModelFacts.of_run(load_config(None, {"model": str(tiny_mixtral_dir)})) == ModelFacts("mixtral", 4)
    llm = tf.load(str(tiny_mixtral_dir), precision="fp32", device="cpu")
    run = llm.train(lines_file, max_steps=2, output_dir=str(tmp_path / "run"), show_progress=False)
    assert run.steps == 2 and run.final_loss == run.final_loss  # trained, a number
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "lora_dropout: 0.0" in saved and "4 experts a layer" in saved
    experts = [n for n, p in llm.model.named_parameters() if p.requires_grad and ".experts." in n]
    assert experts  # the experts carry LoRA weights too, not only attention


def test_a_lora_dropout_given_for_a_mixture_of_experts_is_refused_naming_the_fix(
    tiny_mixtral_dir, lines_file, tmp_path
):
    import tuneforge as tf

    llm = tf.load(str(tiny_mixtral_dir), precision="fp32", device="cpu")
    with pytest.raises(ModelError, match="without dropout: set lora_dropout: 0, or name target_modules"):
        llm.train(
            lines_file, max_steps=1, lora_dropout=0.1, output_dir=str(tmp_path / "run"), show_progress=False
        )


def test_all_linear_leaves_out_a_routers_own_linear_whose_forward_returns_a_tuple(
    tokenizer, lines_file, tmp_path
):
    import tuneforge as tf

    # phimoe's router is an nn.Linear subclass returning (weights, experts): LoRA's base(x) + update failed on it
    llm = tf.load(str(_tiny_moe("phimoe", tmp_path / "phimoe", tokenizer)), precision="fp32", device="cpu")
    run = llm.train(lines_file, max_steps=1, output_dir=str(tmp_path / "run"), show_progress=False)
    trained = {n for n, p in llm.model.named_parameters() if p.requires_grad}
    assert run.steps == 1 and not any(".router." in n for n in trained)
    assert any(".self_attn.q_proj.lora_A" in n for n in trained)
