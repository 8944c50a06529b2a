"""Packing is exact only where the architecture keeps packed examples apart: for every model type in
models/kind.PACKING_MODEL_TYPES a packed block's loss equals its examples' losses one by one, and for the types
left out it does not (so recipe auto never packs for them).

python -m pytest tests/unit/models/test_packing_architectures.py -q
"""

import pytest
import torch

from tests.conftest import TINY_SIZES
from tuneforge.data.batching import collate
from tuneforge.data.packing import pack_examples
from tuneforge.models.kind import PACKING_MODEL_TYPES, packs_exactly
from tuneforge.train.loss import batch_loss_sum

LLAMA_LIKE = TINY_SIZES
HEAD_DIM_8 = dict(LLAMA_LIKE, head_dim=8)
EXPERTS = dict(num_local_experts=2, num_experts_per_tok=1)
SIZES = {  # tiny configs in each model type's own key names (the llama-like ones need nothing else)
    "codegen": dict(n_embd=32, n_layer=2, n_head=4, n_positions=512, n_ctx=512, rotary_dim=4),
    "falcon": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False
    ),
    "gemma": HEAD_DIM_8,
    "gemma2": HEAD_DIM_8,
    "gemma3_text": dict(HEAD_DIM_8, sliding_window=16),
    "glm": HEAD_DIM_8,
    "glm4": HEAD_DIM_8,
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=512),
    "gpt_neo": dict(
        hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]], window_size=16
    ),
    "gpt_neox": dict(LLAMA_LIKE, num_key_value_heads=None),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, n_positions=512, rotary_dim=4),
    "ernie4_5": HEAD_DIM_8,
    "granitemoe": dict(LLAMA_LIKE, **EXPERTS),
    "helium": HEAD_DIM_8,
    "hunyuan_v1_dense": HEAD_DIM_8,
    "mixtral": dict(LLAMA_LIKE, **EXPERTS),
    "nemotron": HEAD_DIM_8,
    "phi": dict(LLAMA_LIKE, num_key_value_heads=None),
    "phimoe": dict(LLAMA_LIKE, **EXPERTS),
    "qwen2_moe": dict(
        LLAMA_LIKE,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=2,
        num_experts_per_tok=1,
    ),
    "qwen3": HEAD_DIM_8,
    "qwen3_moe": dict(HEAD_DIM_8, moe_intermediate_size=32, num_experts=2, num_experts_per_tok=1),
    "seed_oss": HEAD_DIM_8,
    # measured not to keep packed examples apart
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),
    "opt": dict(LLAMA_LIKE, ffn_dim=64, word_embed_proj_dim=32),
    "mpt": dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=512),
    "gpt_oss": dict(HEAD_DIM_8, sliding_window=16, **EXPERTS),
    "lfm2": dict(LLAMA_LIKE, layer_types=["conv", "full_attention"]),
}
NOT_PACKING = ["bloom", "opt", "mpt", "gpt_oss", "lfm2"]


def _tiny_model(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    sizes = {k: v for k, v in SIZES.get(model_type, LLAMA_LIKE).items() if v is not None}
    config = AutoConfig.for_model(model_type, vocab_size=1000, pad_token_id=0, **sizes)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger weights: a near-uniform random model's loss hides what it attends to
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) or type(module).__name__ == "Conv1D":
                module.weight.mul_(8)
    return model


def _packed_and_alone_losses(model_type: str) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length in (24, 9, 17, 6, 11):
        ids = torch.randint(5, 1000, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": list(ids)})
    model = _tiny_model(model_type)
    packed = pack_examples(examples, 64)
    assert len(packed) == 2  # several examples share a block
    with torch.no_grad():
        together = sum(float(batch_loss_sum(model, collate([block], pad_token_id=0))) for block in packed)
        alone = sum(float(batch_loss_sum(model, collate([example], pad_token_id=0))) for example in examples)
    return together, alone


@pytest.mark.parametrize("model_type", sorted(PACKING_MODEL_TYPES))
def test_a_packed_block_trains_as_its_examples_alone_in_every_packing_model_type(model_type):
    together, alone = _packed_and_alone_losses(model_type)
    assert together == pytest.approx(alone, rel=1e-5)


@pytest.mark.parametrize("model_type", NOT_PACKING)
def test_the_model_types_left_out_let_packed_examples_attend_to_each_other(model_type):
    assert not packs_exactly(model_type)
    together, alone = _packed_and_alone_losses(model_type)
    assert abs(together - alone) > 1e-4 * abs(alone)
