import time

import pytest

from tuneforge.errors import ModelError
from tuneforge.hardware import pick_precision
from tuneforge.models.loading import resolve
from tuneforge.paths import write_folder_atomically


def test_missing_local_path_is_named():
    with pytest.raises(ModelError, match="does not exist"):
        resolve("./no/such/model")


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
