"""Hostile input gets nobody in and crashes nothing: pickles and remote code are refused, the chat template runs
sandboxed, and every data reader turns arbitrary bytes into rows or one typed data error.
"""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tuneforge as tf
from tests.reliability.test_checkpoint_faults import Marker
from tuneforge.errors import ModelError, TuneforgeError


def test_an_adapter_bin_pickle_is_refused_and_never_unpickled(tiny_llm, tiny_model_dir, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": 4,
                "lora_alpha": 8,
                "target_modules": ["q_proj"],
                "base_model_name_or_path": str(tiny_model_dir),
            }
        )
    )
    torch.save({"base_model.model.x": Marker(tmp_path / "PWNED")}, folder / "adapter_model.bin")
    with pytest.raises(ModelError, match="adapter_model.bin, a pickle"):
        tiny_llm.load_adapter(str(folder), name="evil")
    from peft import PeftModel  # PEFT's own loader (used by export) reads .bin with weights_only=True as well

    with pytest.raises(Exception, match="(?i)weights.only|unsupported global"):
        PeftModel.from_pretrained(tiny_llm.model, str(folder))
    assert not (tmp_path / "PWNED").exists()


def test_a_model_folder_asking_for_remote_code_is_refused_unless_trusted(tiny_model_dir, tmp_path):
    folder = tmp_path / "evil-model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"from pathlib import Path\nPath({str(tmp_path / 'PWNED')!r}).touch()\n")
    with pytest.raises(ModelError, match="trust_remote_code"):
        tf.load(str(folder), precision="fp32")
    assert not (tmp_path / "PWNED").exists()


def test_a_chat_template_reaching_for_python_internals_fails_in_the_sandbox(tokenizer):
    from jinja2.exceptions import SecurityError

    hostile = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(SecurityError):
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], chat_template=hostile, tokenize=False
        )


READERS = ["txt", "json", "jsonl", "csv", "tsv"]


@pytest.mark.parametrize("suffix", READERS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=10,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_every_reader_turns_arbitrary_bytes_into_rows_or_one_data_error(suffix, content, tmp_path):
    from tuneforge.data.sources import read_source

    path = tmp_path / f"data.{suffix}"
    path.write_bytes(content)
    with contextlib.suppress(TuneforgeError):
        read_source(path)


@settings(max_examples=40, deadline=None)
@given(name=st.text(max_size=40))
def test_the_path_validator_gives_a_path_inside_its_root_or_a_refusal(name, tmp_path_factory):
    from tuneforge.paths import resolve_inside

    root = tmp_path_factory.getbasetemp() / "root"
    root.mkdir(exist_ok=True)
    try:
        resolved = resolve_inside(root, name, must_exist=False)
    except TuneforgeError:
        return
    assert resolved == root.resolve() or root.resolve() in resolved.parents


MALFORMED = {
    "empty.txt": b"",
    "blank.txt": b"  \n\t\n  ",
    "header_only.csv": b"text\n",
    "syntax_error_line_4.jsonl": b'{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n{"text": \n',
    "bom.txt": "\ufeffa line about cheese\n".encode(),
    "utf16.txt": "a line about ham\n".encode("utf-16"),
    "invalid_utf8.txt": b"bread \xff\xfe and \xc3 cheese\n",
    "nul.txt": b"a\x00b line\n",
    "crlf.txt": b"one line\r\ntwo lines\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_file_loads_by_a_rule_or_gives_one_error_with_the_file(name, tmp_path):
    from tuneforge.data.sources import read_source

    path = tmp_path / name
    path.write_bytes(MALFORMED[name])
    try:
        source = read_source(path)
    except TuneforgeError as error:
        assert name in str(error)
        if name.startswith("syntax_error"):
            assert f"{name}:4:" in str(error)  # file:line:column
        return
    assert source is not None
    if name in ("bom.txt", "crlf.txt"):
        text = source.text if source.kind == "text" else json.dumps(source.records)
        assert "\ufeff" not in text and "\r" not in text


def test_a_50_mb_single_line_is_read_or_refused_by_name(tmp_path):
    from tuneforge.data.sources import read_source

    path = tmp_path / "one_line.txt"
    path.write_bytes(b"cheese " * (50 * 2**20 // 7))
    try:
        read_source(path)
    except TuneforgeError as error:
        assert path.name in str(error)
