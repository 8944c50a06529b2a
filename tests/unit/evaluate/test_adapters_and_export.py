"""Several adapters side by side, merging (same logits as the adapter), comparison tables and GGUF export."""

import os

import pytest
import torch

import tuneforge as tf
from tuneforge.errors import ConfigError, ModelError
from tuneforge.evaluate.compare import record_gallery
from tuneforge.generate import GenerationSettings

PROMPT = "you can make a"


def logits(model, tokenizer, text=PROMPT):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_adapters_load_side_by_side_and_base_means_no_adapter(tiny_llm, tiny_model_dir, adapter_dirs):
    plain = logits(tiny_llm.model, tiny_llm.tokenizer)
    assert tiny_llm.load_adapter(adapter_dirs[0], name="one") == "one"
    tiny_llm.load_adapter(adapter_dirs[1], name="two")
    assert tiny_llm.adapters == ["one", "two"]
    side = tiny_llm.next_token_probs("To be or not to", k=3, adapters=["base", "one", "two"])
    assert side["base"] == tf.load(str(tiny_model_dir), precision="fp32").next_token_probs(
        "To be or not to", 3
    )
    assert side["one"] != side["base"] and side["two"] != side["one"]
    with tiny_llm.use_adapter("base"):
        assert torch.allclose(logits(tiny_llm.model, tiny_llm.tokenizer), plain)
    single = tf.load(str(tiny_model_dir), adapter=adapter_dirs[1], precision="fp32")
    with tiny_llm.use_adapter("two"):
        assert torch.allclose(
            logits(tiny_llm.model, tiny_llm.tokenizer), logits(single.model, single.tokenizer), atol=1e-5
        )
    with pytest.raises(ModelError, match="no adapter named"), tiny_llm.use_adapter("three"):
        pass
    tiny_llm.unload_adapter("one")
    assert tiny_llm.adapters == ["two"]
    with pytest.raises(ModelError, match="no adapter named 'one' is loaded; loaded: two"):
        tiny_llm.unload_adapter("one")  # a wrong name removes nothing, even of the last adapter
    assert tiny_llm.adapters == ["two"]
    tiny_llm.unload_adapter()
    assert tiny_llm.adapters == [] and torch.allclose(logits(tiny_llm.model, tiny_llm.tokenizer), plain)


def test_training_a_loaded_adapter_continues_it_with_its_own_shape(
    tiny_model_dir, adapter_dirs, lines_file, tmp_path
):
    """An adapter loaded from a folder is named after it ('one'), and a run continuing it keeps its rank and
    alpha: recipe auto chooses none for it, and a different one given is refused before anything runs."""
    import yaml

    llm = tf.load(str(tiny_model_dir), precision="fp32")
    assert llm.load_adapter(adapter_dirs[0]) == "one"
    with pytest.raises(ConfigError, match="adapter 'one' has rank 4 but rank 8 was asked for"):
        llm.train(lines_file, rank=8, max_steps=1, show_progress=False, output_dir=str(tmp_path / "no"))
    run = llm.train(lines_file, max_steps=2, show_progress=False, output_dir=str(tmp_path / "run"))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["rank"], saved["alpha"]) == (4, 8)  # a new adapter on this data would get rank 16
    assert run.final_loss is not None
    reloaded = tf.load(str(tiny_model_dir), adapter=run.saved_to, precision="fp32")
    assert torch.allclose(
        logits(reloaded.model, reloaded.tokenizer), logits(llm.model, llm.tokenizer), atol=1e-5
    )

    # a textgen run's adapter has the keys' own defaults (rank 32, alpha 64, q_proj and v_proj): still kept
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    textgen = LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), textgen).save_pretrained(
        tmp_path / "textgen"
    )
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    llm.load_adapter(tmp_path / "textgen")
    llm.train(lines_file, max_steps=1, show_progress=False, output_dir=str(tmp_path / "again"))
    saved = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert (saved["rank"], saved["alpha"], saved["target_modules"]) == (32, 64, ["q_proj", "v_proj"])


def test_save_writes_the_active_adapter_at_the_folders_root(tiny_model_dir, adapter_dirs, tmp_path):
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    llm.load_adapter(adapter_dirs[0])  # named 'one'; PEFT would save it in saved/one/
    llm.load_adapter(adapter_dirs[1])  # 'two', now active
    llm.save(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    again = tf.load(str(tiny_model_dir), adapter=tmp_path / "saved", precision="fp32")
    assert torch.allclose(logits(again.model, again.tokenizer), logits(llm.model, llm.tokenizer), atol=1e-5)


def test_merged_folder_loads_in_plain_transformers_with_the_adapters_logits(
    tiny_model_dir, adapter_dirs, tmp_path
):
    from transformers import AutoModelForCausalLM

    llm = tf.load(str(tiny_model_dir), adapter=adapter_dirs[0], precision="fp32")
    expected = logits(llm.model, llm.tokenizer)
    llm.merge(tmp_path / "merged")
    assert llm.adapters == []
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    assert (logits(reference, llm.tokenizer) - expected).abs().max().item() < 1e-4
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


def test_merge_without_an_adapter_is_a_clear_error(tiny_llm):
    with pytest.raises(ModelError, match="no adapter to merge"):
        tiny_llm.merge()


def test_merge_and_export_refuse_a_target_they_would_not_write_or_would_spoil(tiny_llm, tmp_path):
    from tuneforge.models.export import export_gguf, save_folder

    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("rank: 8\n")
    with pytest.raises(ModelError, match="is a file; give a folder"):
        save_folder(tiny_llm.model, tiny_llm.tokenizer, tmp_path / "notes.txt")
    with pytest.raises(ModelError, match="already holds files that are not a model"):
        save_folder(tiny_llm.model, tiny_llm.tokenizer, tmp_path / "run")
    with pytest.raises(ModelError, match="is a folder; give the GGUF file"):
        export_gguf(tiny_llm.model, tiny_llm.tokenizer, tmp_path / "run")
    assert (tmp_path / "notes.txt").read_text() == "keep me" and os.listdir(tmp_path / "run") == [
        "config.yaml"
    ]
    save_folder(tiny_llm.model, tiny_llm.tokenizer, tmp_path / "merged")
    save_folder(
        tiny_llm.model, tiny_llm.tokenizer, tmp_path / "merged"
    )  # an earlier model's folder: replaced


def test_perplexity_for_base_and_adapters_in_one_call(tiny_llm, adapter_dirs, tmp_path):
    tiny_llm.load_adapter(adapter_dirs[0], name="one")
    history = tmp_path / "history.jsonl"
    results = tiny_llm.perplexity(
        "you can make a tasty cheese sandwich",
        max_length=8,
        stride=4,
        adapters=["base", "one"],
        history=history,
    )
    assert [r.label for r in results] == ["base", "one"]
    assert results[0].perplexity != results[1].perplexity
    assert len(history.read_text().splitlines()) == 2


def test_compare_writes_markdown_and_html_with_a_column_per_model(tiny_llm, adapter_dirs, tmp_path):
    tiny_llm.load_adapter(adapter_dirs[0], name="one")
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("you can make a tasty cheese sandwich\nanyone can build a ham sandwich\n")
    result = tiny_llm.compare(
        [PROMPT, "anyone can"], seeds=[0, 1], heldout=heldout, max_new_tokens=4, max_length=16, stride=8
    )
    assert result.labels == ["base", "one"]
    with tiny_llm.use_adapter("base"):
        assert result.outputs["base"][1] == tiny_llm.generate(PROMPT, max_new_tokens=4, seed=1)
    markdown, page = result.write(tmp_path / "out")
    text = markdown.read_text()
    assert "| prompt | seed | base | one |" in text and "change vs base" in text
    assert text.count("\n| you can make a | ") == 2  # one row per seed
    assert "<table>" in page.read_text() and "perplexity" in page.read_text()


def test_a_gallery_grows_one_column_per_recorded_step(tiny_llm, tmp_path):
    for step in (10, 20):
        record_gallery(
            tiny_llm.model,
            tiny_llm.tokenizer,
            tmp_path,
            step,
            [PROMPT],
            heldout="you can make it",
            settings=GenerationSettings(max_new_tokens=4),
        )
    text = (tmp_path / "gallery.md").read_text()
    assert "| step 10 | step 20 |" in text and (tmp_path / "gallery.html").is_file()


def test_gguf_export_loads_back_in_transformers_with_the_same_tokenizer_and_logits(tiny_llm, tmp_path):
    from tuneforge.models.export import export_gguf, verify_gguf

    path = export_gguf(tiny_llm.model, tiny_llm.tokenizer, tmp_path / "tiny.gguf", dtype="f32")
    # "\n\n1.": transformers' GGUF reader drops SmolLM2's digit split (ĊĊ 1 read back as Ċ Ċ 1); the check
    # reads the tokenizer back as llama.cpp and tuneforge do, by the file's tokenizer.ggml.pre
    prompts = ["you can make a", "To be or not to", "Steps:\n\n1. Mix"]
    check = verify_gguf(tiny_llm.model, tiny_llm.tokenizer, path, prompts=prompts)
    assert check.ok and check.agreement == 1.0, check
    assert check.max_logit_difference < 1e-4  # f32: the round trip is exact up to float noise


def test_a_qwen2_model_exports_to_gguf_unpermuted_with_its_biases_and_loads_back_the_same(
    tokenizer, tmp_path
):
    import gguf

    import tuneforge as tf
    from tests.conftest import save_tiny_model
    from tuneforge.models.export import export_gguf, verify_gguf

    # more embedding rows than tokens, as Qwen2.5's 151,936 for 151,665 tokens
    folder = save_tiny_model(
        "qwen2",
        tmp_path / "qwen2",
        tokenizer,
        tie_word_embeddings=True,
        initializer_range=0.1,
        vocab_size=len(tokenizer) + 64,
    )
    llm = tf.load(str(folder), precision="fp32", device="cpu")
    path = export_gguf(llm.model, llm.tokenizer, tmp_path / "qwen2.gguf", dtype="f32")
    reader = gguf.GGUFReader(str(path))
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "qwen2"
    # the name of the split the loaded tokenizer makes: transformers loads a qwen2 folder's tokenizer as
    # Qwen2Tokenizer, which splits with Qwen2's regex whatever tokenizer.json holds
    assert bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode() == "qwen2"
    assert "blk.0.attn_q.bias" in {t.name for t in reader.tensors}  # Qwen2's q/k/v biases
    # llama.cpp takes the embedding's rows from the token list: a shorter list fails its load
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == llm.model.config.vocab_size
    assert bytes(tokens.parts[tokens.data[-1]]).decode() == f"[PAD{llm.model.config.vocab_size - 1}]"
    check = verify_gguf(llm.model, llm.tokenizer, path, prompts=["you can make a", "To be or not to"])
    assert check.ok and check.max_logit_difference < 1e-4, check  # permuting q/k as for llama would break it


@pytest.mark.parametrize("model_type, settings", [("llama", {}), ("mistral", {"head_dim": 16})])
def test_a_sentencepiece_model_exports_as_llama_cpp_s_llama_vocabulary_with_scores_and_loads_back_the_same(
    tmp_path, model_type, settings
):
    import gguf

    import tuneforge as tf
    from tests.conftest import SHARED_DATA, save_tiny_model, sentencepiece_tokenizer
    from tuneforge.models.export import export_gguf, verify_gguf

    pieces = sentencepiece_tokenizer((SHARED_DATA / "tinyshakespeare.txt").read_text()[:200_000])
    folder = save_tiny_model(
        model_type,
        tmp_path / f"tiny-{model_type}",
        pieces,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        **settings,
    )
    llm = tf.load(str(folder), precision="fp32", device="cpu")
    path = export_gguf(llm.model, llm.tokenizer, tmp_path / "sp.gguf", dtype="f32")
    fields = gguf.GGUFReader(str(path)).fields

    def value(key):
        field = fields[key]
        return [field.parts[i].tolist() for i in field.data]

    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"
    types, scores = value("tokenizer.ggml.token_type"), value("tokenizer.ggml.scores")
    vocab = llm.tokenizer.get_vocab()
    assert types[vocab["<0x0A>"]] == [gguf.TokenType.BYTE] and types[0] == [gguf.TokenType.UNKNOWN]
    assert types[vocab["</s>"]] == [gguf.TokenType.CONTROL]
    # a piece learnt earlier scores higher: llama.cpp merges by score, and equal scores split words otherwise
    assert scores[vocab["▁t"]] > scores[vocab["▁the"]] > scores[vocab["▁there"]]
    adds_bos = llm.tokenizer("a")["input_ids"][0] == 1
    assert value("tokenizer.ggml.add_bos_token") == [[adds_bos]]
    # the reader derives its merges from the scores: any other order tokenizes these prompts differently
    prompts = ["To be or not to", "Thereupon, my lord: 1, 2, 3\n\n- naïve", "Steps:\n\n1. Mix"]
    check = verify_gguf(llm.model, llm.tokenizer, path, prompts=prompts)
    assert check.ok and check.max_logit_difference < 1e-4, check
