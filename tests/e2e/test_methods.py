"""Each fine-tuning method trains the real default model for a few steps and lowers the loss."""

import pytest
import torch

from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.e2e
CHEESE = SHARED_DATA / "cheese_instructions.txt"


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_method_lowers_the_loss_on_the_default_model(method, tmp_path):
    import tuneforge as tf

    llm = tf.load("default", precision="fp32")
    frozen = None
    run = llm.train(CHEESE, method=method, format="lines", target_modules=["q_proj", "v_proj"], rank=8, alpha=16,
                    learning_rate=1e-4 if method == "full" else 3e-3, batch_size=4, micro_batch_size=4,
                    max_steps=4, lr_scheduler="constant", output_dir=str(tmp_path / "run"), show_progress=False)
    assert run.final_loss < run.losses[0]
    if method == "qlora":
        frozen = {n: p for n, p in llm.model.named_parameters() if "base_layer" in n}
        assert frozen and not any(p.requires_grad for p in frozen.values())
        assert any(p.dtype == torch.uint8 for p in frozen.values())  # the base really is 4-bit
