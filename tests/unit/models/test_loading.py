import time

import pytest

from tuneforge.errors import ModelError
from tuneforge.hardware import pick_precision
from tuneforge.models.loading import resolve
from tuneforge.paths import write_folder_atomically


def test_missing_local_path_is_named():
    with pytest.raises(ModelError, match="does not exist"):
        resolve("./no/such/model")


def test_a_file_given_as_the_model_is_explained(tmp_path):
    (tmp_path / "cheese.txt").write_text("Cheese is made from milk.\n")
    with pytest.raises(ModelError, match="is a file; give a model folder"):
        resolve(str(tmp_path / "cheese.txt"))


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))


def test_unreachable_hub_id_fails_fast_with_offline_alternatives(monkeypatch):
    import tuneforge as tf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelError, match="hub cannot be reached; offline, use model: default"):
        tf.load("some-org/some-model-that-is-not-cached")
    assert time.perf_counter() - start < 10


def test_a_hub_prefixed_name_is_never_read_from_this_disk(monkeypatch, tmp_path, tiny_model_dir):
    """hub:owner/name with a loadable folder ./owner/name right here: offline it is the same refusal as for
    a name with no such folder, and the local folder is not loaded."""
    import shutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(tiny_model_dir, tmp_path / "owner" / "name")
    assert resolve("owner/name").path == "owner/name"  # without the prefix the folder is what you meant
    messages = []
    for name in ("owner/name", "owner/missing"):
        with pytest.raises(ModelError) as refused:
            resolve(f"hub:{name}")
        messages.append(str(refused.value).replace(name, "NAME"))
    assert messages[0] == messages[1] and "not in the local Hugging Face cache" in messages[0]


def test_interrupted_conversion_leaves_no_half_model(tmp_path):
    target = tmp_path / "models" / "converted"

    def crash_halfway(folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_folder_atomically(target, crash_halfway)
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []  # the temporary folder is gone too
    write_folder_atomically(target, lambda folder: (folder / "config.json").write_text("{}"))
    assert (target / "config.json").is_file()


def test_explicit_precision_is_kept_and_auto_resolves():
    assert pick_precision("fp32", "cpu") == "fp32"
    assert pick_precision("auto", "cpu") in {"fp32", "bf16"}


def test_tiny_model_loads_from_a_local_folder(tiny_model_dir):
    import tuneforge as tf

    llm = tf.load(str(tiny_model_dir), precision="fp32")
    assert llm.model.config.num_hidden_layers == 2
    assert llm.tokenizer.pad_token is not None
    text = llm.generate("Hello", max_new_tokens=3, do_sample=False)
    assert text == llm.generate("Hello", max_new_tokens=3, do_sample=False)


def test_same_seed_gives_the_same_sample(tiny_llm):
    first = tiny_llm.generate("Hello", max_new_tokens=8, seed=7)
    assert tiny_llm.generate("Hello", max_new_tokens=8, seed=7) == first


def test_a_converted_gguf_loaded_in_bf16_reads_a_bf16_copy_with_the_same_bits(
    monkeypatch, tmp_path, tiny_model_dir
):
    """A GGUF's conversion is fp32 (exact); a bf16 load makes a bf16 copy beside it once (reading a fp32 file
    in bf16 maps all of it: 1.2 GB peak for the default model) and reads that, with the same weights. Other
    folders, fp32 loads and 4-bit bases (quantized from the fp32 weights) read the folder itself."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from tuneforge.models.loading import BF16_COPY_SUFFIX, load_model, weights_folder

    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    converted = tmp_path / "home" / "models" / "tiny-0123abcd"
    shutil.copytree(tiny_model_dir, converted)
    copy = converted.with_name(converted.name + BF16_COPY_SUFFIX)
    assert weights_folder(str(converted), torch.float32) == str(converted) and not copy.exists()
    assert weights_folder(str(tiny_model_dir), torch.bfloat16) == str(tiny_model_dir)  # not a conversion

    model, _, source = load_model(str(converted), precision="bf16", device="cpu")
    assert copy.is_dir() and source.path == str(converted)  # the run still names the conversion,
    assert model.name_or_path == str(converted)  # and so does an adapter's base_model_name_or_path
    want = AutoModelForCausalLM.from_pretrained(str(converted), dtype=torch.bfloat16).state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert weights_folder(str(converted), torch.bfloat16) == str(copy)
    assert weights_folder(str(copy), torch.bfloat16) == str(copy)  # a copy is not copied again
    assert sorted(p.name for p in converted.parent.iterdir()) == [converted.name, copy.name]  # no temporaries


def test_a_4_bit_load_on_a_cpu_leaves_no_weight_inside_the_checkpoint_file_s_mapping(tiny_model_dir):
    """Unquantized weights left as views of the memory-mapped safetensors file keep the whole mapping, and every
    page quantizing read, resident (0.40 GiB for the default model): they are copied out."""
    from pathlib import Path

    import torch

    from tuneforge.models.loading import load_model
    from tuneforge.models.quantization import bnb_config

    model, _, _ = load_model(str(tiny_model_dir), device="cpu", precision="fp32", quantization=bnb_config(4))
    mapped = []  # address ranges of the checkpoint file in this process
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if fields[-1].endswith(".safetensors") and str(tiny_model_dir) in fields[-1]:
            start, end = (int(value, 16) for value in fields[0].split("-"))
            mapped.append((start, end))
    plain = [p for p in model.parameters() if type(p) is torch.nn.Parameter]
    assert plain and len(plain) < len(list(model.parameters()))  # embeddings/norms, and quantized layers
    assert not any(start <= p.data_ptr() < end for p in plain for start, end in mapped)


def test_a_tokenizer_without_pad_or_end_token_still_batches(tmp_path):
    """Padding carries no loss or attention, so any token pads; without one step 1 failed inside torch."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tuneforge.data.batching import collate
    from tuneforge.models.loading import ModelSource, load_tokenizer

    words = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "cheese": 2}, unk_token=None))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(tmp_path)
    tokenizer = load_tokenizer(ModelSource("words", str(tmp_path)))
    assert tokenizer.eos_token is None and tokenizer.pad_token_id is not None
    ids = tokenizer(["hello world cheese", "cheese"])["input_ids"]
    batch = collate([{"input_ids": i, "labels": i} for i in ids], tokenizer.pad_token_id)
    assert batch["attention_mask"][1].tolist() == [1] + [0] * 7 and (batch["labels"][1][1:] == -100).all()
