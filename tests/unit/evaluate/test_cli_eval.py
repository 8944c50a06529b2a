"""The CLI verbs generate, logits, perplexity, compare, merge and export on the tiny model, in-process."""

import argparse
import json

import pytest

from tuneforge.cli import COMMANDS, command_of, main
from tuneforge.cli.evaluate import add_eval_commands


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_verb_registers_on_a_parser_without_abbreviations():
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_eval_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["generate", "hi", "--max_new_tokens", "3", "--min-p", "0.1", "--stop", "x"])
    assert (
        COMMANDS[command_of(args)] is COMMANDS["generate"] and args.max_new_tokens == 3 and args.min_p == 0.1
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "hi", "--max-new", "3"])  # no prefix matching


def test_generate_streams_the_same_text_as_without_streaming(capsys, tiny_model_dir):
    common = [
        "generate",
        "--model",
        tiny_model_dir,
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--max-new-tokens",
        "8",
        "--seed",
        "3",
        "you can",
    ]
    code, whole, _ = run(capsys, *common)
    assert code == 0 and whole.startswith("you can")
    assert run(capsys, *common, "--stream")[1] == whole
    code, chat, _ = run(capsys, *common[:-1], "--chat", "true", "you can")
    assert code == 0 and chat.startswith("user: you can\nassistant: ")  # a reply, not glued to the prompt
    unseeded = [part if part != "3" else "none" for part in common]  # help: "'none': a new draw each call"
    code, _, err = run(capsys, *unseeded)
    assert code == 0, err


def test_a_run_folder_given_as_the_adapter_means_its_adapter_and_a_missing_one_fails_before_the_model_loads(
    capsys, monkeypatch, tiny_model_dir, adapter_dirs, tmp_path
):
    import shutil

    import tuneforge

    shutil.copytree(adapter_dirs[0], tmp_path / "run" / "adapter")
    code, out, err = run(capsys, "logits", "--model", tiny_model_dir, "--adapter", tmp_path / "run", "hi")
    assert code == 0 and "run" in out, err  # the variant named after its run
    monkeypatch.setattr(tuneforge, "load", lambda *a, **k: pytest.fail("the model loaded first"))
    code, _, err = run(capsys, "generate", "--model", tiny_model_dir, "--adapter", tmp_path / "empty", "hi")
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "generate", "--model", tiny_model_dir, "--adapter", tmp_path / "empty", "hi")
    assert code == 2 and "nor a run folder holding one" in err
    code, _, err = run(capsys, "generate", "--model", tiny_model_dir, "--adapter", tmp_path / "nope", "hi")
    assert code == 2 and "adapter folder" in err and "does not exist" in err


def test_logits_shows_base_and_adapter_side_by_side(capsys, tiny_model_dir, adapter_dirs):
    code, out, _ = run(
        capsys,
        "logits",
        "--model",
        tiny_model_dir,
        "--adapter",
        adapter_dirs[0],
        "--top",
        "3",
        "--device",
        "cpu",
        "To be or not to",
    )
    lines = out.splitlines()
    assert code == 0 and "base" in lines[1] and "one" in lines[1] and len(lines) == 5


def test_perplexity_prints_a_table_and_records_history(capsys, tiny_model_dir, adapter_dirs, tmp_path):
    data = tmp_path / "heldout.txt"
    data.write_text("you can make a tasty cheese sandwich\n" * 4)
    history = tmp_path / "history.jsonl"
    code, out, _ = run(
        capsys,
        "perplexity",
        data,
        "--model",
        tiny_model_dir,
        "--adapter",
        adapter_dirs[0],
        "--max-length",
        "16",
        "--stride",
        "8",
        "--history",
        history,
        "--device",
        "cpu",
    )
    assert code == 0 and "| base |" in out and "| one |" in out and "vs base" in out
    assert "2 past evaluations" in run(capsys, "perplexity", "--show-history", "--history", history)[1]


def test_an_adapter_given_as_the_model_is_scored_as_that_adapter_beside_its_base(
    capsys, adapter_dirs, tmp_path
):
    """tf.load(ADAPTER) brings its base; the CLI had then shown the plain base, labelled base, for it."""
    data = tmp_path / "heldout.txt"
    data.write_text("you can make a tasty cheese sandwich\n" * 4)
    code, out, _ = run(
        capsys, "perplexity", data, "--model", adapter_dirs[0], "--no-history", "--device", "cpu"
    )
    _, named, _ = run(
        capsys,
        "perplexity",
        data,
        "--adapter",
        adapter_dirs[0],
        "--no-history",
        "--device",
        "cpu",
        "--model",
        json.loads((adapter_dirs[0] / "adapter_config.json").read_text())["base_model_name_or_path"],
    )
    assert code == 0 and "| base |" in out and "| one |" in out and out == named


def test_a_long_perplexity_says_how_far_it_has_read_when_not_on_a_terminal(capsys, monkeypatch):
    from tuneforge.cli import evaluate

    clock = iter([0.0, 5.0, 16.0, 17.0, 40.0])
    monkeypatch.setattr(evaluate, "monotonic", lambda: next(clock))
    with evaluate.reading_progress("perplexity of base") as progress:
        for done in (100, 2_000, 2_500, 4_000):  # at 5 s, 16 s, 17 s and the end (40 s)
            progress(done, 4_000)
    assert capsys.readouterr().err == "perplexity of base: 2,000/4,000 tokens read\n"


def test_compare_and_merge_write_their_files(capsys, tiny_model_dir, adapter_dirs, tmp_path):
    code, out, _ = run(
        capsys,
        "compare",
        "--model",
        tiny_model_dir,
        "--adapter",
        adapter_dirs[0],
        "--adapter",
        adapter_dirs[1],
        "--max-new-tokens",
        "4",
        "--seeds",
        "0",
        "--output",
        tmp_path / "cmp",
        "--device",
        "cpu",
        "you can",
    )
    assert code == 0 and "| prompt | seed | base | one | two |" in out
    assert (tmp_path / "cmp" / "compare.html").is_file()
    code, out, _ = run(
        capsys, "compare", "--model", tiny_model_dir, "--max-new-tokens", "2", "--seed", "5", "hi"
    )
    assert code == 0 and "| hi | 5 |" in out  # --seed alone is the one seed, not silently 0 and 1
    code, out, _ = run(
        capsys,
        "merge",
        "--model",
        tiny_model_dir,
        "--adapter",
        adapter_dirs[0],
        "--output",
        tmp_path / "merged",
    )
    assert code == 0 and (tmp_path / "merged" / "config.json").is_file()


def test_bad_input_is_one_line_and_exit_code_2(capsys, tiny_model_dir, tmp_path):
    code, _, err = run(capsys, "perplexity", tmp_path / "missing.txt", "--model", tiny_model_dir)
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    code, _, err = run(capsys, "logits", "--model", tiny_model_dir, "--adapter", tmp_path, "hi")
    assert code == 2 and "neither an adapter folder" in err


def test_perplexity_and_compare_read_a_file_in_the_encoding_given(capsys, tiny_model_dir, tmp_path):
    """The undecodable-byte error tells the user to pass --encoding; these verbs had no such flag."""
    data = tmp_path / "latin.txt"
    data.write_bytes("café au lait, déjà vu et crème brûlée\n".encode("latin-1") * 3)
    code, _, err = run(capsys, "perplexity", data, "--model", tiny_model_dir, "--format", "raw")
    assert code == 2 and "--encoding" in err
    code, latin, _ = run(
        capsys, "perplexity", data, "--model", tiny_model_dir, "--format", "raw", "--encoding", "latin-1"
    )
    utf8 = tmp_path / "utf8.txt"
    utf8.write_text(data.read_bytes().decode("latin-1"))
    _, as_utf8, _ = run(capsys, "perplexity", utf8, "--model", tiny_model_dir, "--format", "raw")
    assert as_utf8.split("|")[3] == latin.split("|")[3]  # the same text, the same perplexity
    code, out, _ = run(
        capsys, "compare", "--model", tiny_model_dir, "--max-new-tokens", "1", "--seed", "0",
        "--heldout", data, "--encoding", "latin-1", "hi",
    )  # fmt: skip
    assert code == 0 and "Perplexity on held-out data" in out


def test_export_takes_a_full_fine_tunes_run_folder_as_its_model_and_a_lora_run_as_its_adapter(
    capsys, tiny_model_dir, adapter_dirs, tmp_path
):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "full" / "model")
    code, out, err = run(capsys, "export", "--adapter", tmp_path / "full", "--gguf", tmp_path / "full.gguf")
    assert code == 0 and "agrees on 100%" in out and "chat template kept: yes" in out, err
    shutil.copytree(adapter_dirs[0], tmp_path / "lora" / "adapter")
    code, out, err = run(
        capsys,
        "export",
        "--model",
        tiny_model_dir,
        "--adapter",
        tmp_path / "lora",
        "--gguf",
        tmp_path / "l.gguf",
    )
    assert code == 0 and "agrees on 100%" in out, err
