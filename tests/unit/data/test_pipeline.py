"""The whole prepare: shapes end to end, split, cache hits and misses, packing, inspect, save/load, CLI."""

import argparse
import json

import pytest

from tuneforge.data import load_preprocessed_data, pack_examples, prepare_examples, save_preprocessed_data
from tuneforge.data.batching import collate
from tuneforge.data.inspection import inspect_data, mark_no_loss
from tuneforge.errors import DataError

ALPACA = [
    {
        "instruction": f"Name fruit number {i}.",
        "input": "" if i % 3 else "in French",
        "output": f"Fruit {i} is an apple.",
    }
    for i in range(20)
]


@pytest.fixture()
def alpaca_file(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA))
    return path


def test_formatted_data_masks_prompts_and_splits_by_count(tokenizer, config, alpaca_file):
    prepared = prepare_examples(alpaca_file, tokenizer, config(validation_split=5))
    assert prepared.shape == "formatted"
    assert len(prepared.train) == 15 and len(prepared.validation) == 5
    assert prepared.report["template_usage"] == {"instruction,output": 13, "instruction,input,output": 7}
    example = prepared.train[0]
    first_loss = next(i for i, label in enumerate(example["labels"]) if label != -100)
    assert tokenizer.decode(example["input_ids"][:first_loss]).endswith("### Response:\n")
    assert example["labels"][first_loss:] == example["input_ids"][first_loss:]


def test_split_is_deterministic_by_seed(tokenizer, config, alpaca_file):
    first = prepare_examples(alpaca_file, tokenizer, config(validation_split=0.25, seed=1), use_cache=False)
    again = prepare_examples(alpaca_file, tokenizer, config(validation_split=0.25, seed=1), use_cache=False)
    other = prepare_examples(alpaca_file, tokenizer, config(validation_split=0.25, seed=2), use_cache=False)
    assert first.validation[:] == again.validation[:] and len(first.validation) == 5
    assert first.validation[:] != other.validation[:]


def test_validation_file_is_used_instead_of_a_split(tokenizer, config, alpaca_file, tmp_path):
    (tmp_path / "val.jsonl").write_text(json.dumps(ALPACA[0]) + "\n")
    prepared = prepare_examples(alpaca_file, tokenizer, config(validation_data=str(tmp_path / "val.jsonl")))
    assert len(prepared.train) == 20 and len(prepared.validation) == 1


def test_same_prepare_is_a_cache_hit_and_any_change_a_miss(tokenizer, config, alpaca_file, private_cache):
    assert not prepare_examples(alpaca_file, tokenizer, config()).cache_hit
    assert prepare_examples(alpaca_file, tokenizer, config(num_proc=2)).cache_hit  # workers don't change data
    assert not prepare_examples(alpaca_file, tokenizer, config(train_on_source=True)).cache_hit
    assert not prepare_examples(alpaca_file, tokenizer, config(cutoff_len=100)).cache_hit
    with pytest.raises(DataError, match="the prompts of 20 examples fill all cutoff_len \\(16\\) tokens"):
        prepare_examples(alpaca_file, tokenizer, config(cutoff_len=16, overlap_len=0))
    alpaca_file.write_text(json.dumps(ALPACA[:10]))
    changed = prepare_examples(alpaca_file, tokenizer, config())
    assert not changed.cache_hit and len(changed.train) == 10
    assert len(list(private_cache.iterdir())) == 4 and not any(
        p.name.startswith(".") for p in private_cache.iterdir()
    )


def test_editing_the_format_file_in_place_prepares_again(
    tokenizer, config, alpaca_file, private_cache, tmp_path
):
    template = tmp_path / "qa-format.json"
    template.write_text(
        json.dumps(
            {
                "instruction,output": "Q: %instruction%\nA: %output%",
                "instruction,input,output": "Q: %instruction% %input%\nA: %output%",
            }
        )
    )
    settings = dict(format="formatted", format_file=str(template))
    first = prepare_examples(alpaca_file, tokenizer, config(**settings))
    template.write_text(template.read_text().replace("Q: ", "Question: "))  # same path, new templates
    edited = prepare_examples(alpaca_file, tokenizer, config(**settings))
    assert not edited.cache_hit
    assert tokenizer.decode(edited.train[0]["input_ids"]).startswith("Question: ")
    assert not tokenizer.decode(first.train[0]["input_ids"]).startswith("Question: ")


def test_raw_text_keeps_the_tail_and_splits_over_chunks(tokenizer, config, tmp_path):
    text = "\n".join(f"Line {i} of a long poem about cheese." for i in range(60))
    (tmp_path / "poem.txt").write_text(text + "\n\n\nA separate story.\n")
    prepared = prepare_examples(tmp_path / "poem.txt", tokenizer, config(format="raw", validation_split=2))
    chunks = list(prepared.train) + list(prepared.validation)
    assert len(prepared.validation) == 2 and all(len(c["input_ids"]) <= 64 for c in chunks)
    decoded = [tokenizer.decode(c["input_ids"]) for c in chunks]
    assert any(d.startswith("A separate story.") for d in decoded)  # hard cut: never joined to the poem
    assert any("Line 59 of a long poem about cheese." in d for d in decoded)  # the tail is kept


@pytest.mark.parametrize("overlap_len", [None, 0, 48])
def test_raw_text_held_out_chunks_share_no_token_with_training(tokenizer, config, tmp_path, overlap_len):
    """Neighbouring chunks overlap (half of cutoff_len unless set), so the held-out chunks are the last ones and
    those overlapping them train neither; a random pick of chunks leaked most held-out text into training."""
    import random

    words = [
        "apple",
        "river",
        "stone",
        "cloud",
        "green",
        "silver",
        "march",
        "quiet",
        "candle",
        "harbor",
        "meadow",
        "lantern",
        "copper",
    ]
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(120))
    (tmp_path / "prose.txt").write_text(text)
    settings = dict(format="raw", validation_split=0.2, overlap_len=overlap_len, newline_favor_len=0)
    prepared = prepare_examples(tmp_path / "prose.txt", tokenizer, config(**settings))
    train, held = [c["input_ids"] for c in prepared.train], [c["input_ids"] for c in prepared.validation]
    assert len(held) >= 2 and len(train) >= 8

    def windows(chunks, n=12):  # long enough to be unique in this random text
        return {tuple(c[i : i + n]) for c in chunks for i in range(len(c) - n + 1)}

    assert not windows(held) & windows(train)
    assert text.splitlines()[-1] in tokenizer.decode(held[-1])  # the end of the text is held out


def test_a_dropped_chunk_between_hard_cuts_leaves_the_split_and_lengths_right(tokenizer, config, tmp_path):
    """A one-token section between hard cuts is dropped (nothing to learn); the lengths of the rows kept must be
    the rows kept (a select()ed dataset's .data is still the whole table: the split then failed)."""
    from tuneforge.data.prepared import ExampleTable

    poem = "\n".join(f"Line {i} of a long poem about cheese." for i in range(30))
    (tmp_path / "cut.txt").write_text(f"{poem}\n\n\nX\n\n\n{poem}\n")
    settings = dict(format="raw", validation_split=0.2, add_eos_token=False, overlap_len=0)
    prepared = prepare_examples(tmp_path / "cut.txt", tokenizer, config(**settings))
    assert prepared.counts["dropped_without_loss"] == 1 and len(prepared.validation) >= 1
    table = prepared.train
    assert table.lengths == [len(table[i]["input_ids"]) for i in range(len(table))]
    rows = ExampleTable(table.rows.select([0, 2])).lengths
    assert rows == [len(table[0]["input_ids"]), len(table[2]["input_ids"])]


def test_a_held_out_chunk_that_begins_a_hard_cut_section_costs_no_chunk_before_it(
    tokenizer, config, tmp_path
):
    """Chunks overlap only within a section: when the held-out chunk begins one, the chunk before it (another
    section's) shares no text with it and is trained on; recipe auto counts the split the same way."""
    from tuneforge.defaults import DataStats, _trained_chunks

    poem = "\n".join(f"Line {i} of a long poem about cheese." for i in range(30))
    (tmp_path / "cut.txt").write_text(f"{poem}\n\n\nA short separate story.\n")
    whole = prepare_examples(tmp_path / "cut.txt", tokenizer, config(format="raw", validation_split=0))
    stats = DataStats.of(whole)
    assert (
        len(stats.section_starts) == 2 and stats.section_starts[0] == 0
    )  # the poem's chunks, then the story's
    assert stats.section_starts[1] == len(whole.train) - 1  # the story is one chunk, the last
    split = prepare_examples(tmp_path / "cut.txt", tokenizer, config(format="raw", validation_split=1))
    assert [
        tokenizer.decode(c["input_ids"]).startswith("A short separate story.") for c in split.validation
    ] == [True]
    assert len(split.train) == len(whole.train) - 1  # every poem chunk trained
    assert _trained_chunks(stats.lengths, 1, 32, stats.section_starts) == len(split.train)
    assert _trained_chunks(stats.lengths, 1, 32, ()) < len(split.train)  # as if the sections overlapped


def test_lines_text_and_input_output_shapes(tokenizer, config, tmp_path):
    (tmp_path / "lines.txt").write_text("first example\nsecond example\n")
    assert len(prepare_examples(tmp_path / "lines.txt", tokenizer, config()).train) == 2
    (tmp_path / "t.jsonl").write_text('{"text": "an unsupervised document"}\n{"text": "another one"}\n')
    text = prepare_examples(tmp_path / "t.jsonl", tokenizer, config())
    assert text.shape == "text" and text.train[0]["labels"] == text.train[0]["input_ids"]
    (tmp_path / "io.jsonl").write_text('{"input": "Q: 2+2?\\nA:", "output": " 4"}\n')
    pair = prepare_examples(tmp_path / "io.jsonl", tokenizer, config())
    assert pair.shape == "input_output"
    n_source = len(tokenizer("Q: 2+2?\nA:", add_special_tokens=False)["input_ids"])
    assert pair.train[0]["labels"][:n_source] == [-100] * n_source


def test_removed_records_are_written_for_review(tokenizer, config, alpaca_file, tmp_path):
    rows = ALPACA + [{"instruction": "Who are you?", "output": "As an AI language model I can't say."}]
    alpaca_file.write_text(json.dumps(rows))
    target = tmp_path / "removed.jsonl"
    prepared = prepare_examples(alpaca_file, tokenizer, config(clean=True, save_removed=str(target)))
    assert prepared.report["removed"]["refusal phrases"] == 1
    assert json.loads(target.read_text())["index"] == 20
    target.unlink()
    prepare_examples(alpaca_file, tokenizer, config(clean=True, save_removed=str(target)))  # a cache hit too
    assert target.is_file()


def test_packed_positions_restart_and_no_loss_crosses_examples(tokenizer, config, alpaca_file):
    blocks = pack_examples(
        [
            {"input_ids": [5, 6], "labels": [5, 6]},
            {"input_ids": [7, 8, 9], "labels": [-100, 8, 9]},
            {"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]},
        ],
        block_size=6,
    )
    # best fit: the 2-token example fills the 4-token one's block exactly, the 3-token one stays alone
    assert blocks == [
        {
            "input_ids": [5, 6, 1, 2, 3, 4],
            "labels": [-100, 6, -100, 2, 3, 4],
            "position_ids": [0, 1, 0, 1, 2, 3],
        },
        {"input_ids": [7, 8, 9], "labels": [-100, 8, 9], "position_ids": [0, 1, 2]},
    ]
    batch = collate(blocks, pad_token_id=0, pad_to_multiple_of=1)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3], [0, 1, 2, 0, 1, 2]]
    prepared = prepare_examples(alpaca_file, tokenizer, config(packing=True, cutoff_len=128))
    assert prepared.counts["packed_blocks"] == len(prepared.train) < 20
    assert "position_ids" in prepared.train[0] and "position_ids" not in collate(ALPACA_IDS, 0)


ALPACA_IDS = [{"input_ids": [1, 2], "labels": [1, 2]}]


def test_inspect_reports_stages_and_marks_no_loss_tokens(tokenizer, config, alpaca_file, tmp_path):
    inspection = inspect_data(
        alpaca_file, tokenizer, config(validation_split=0.1), n_examples=2, histogram=tmp_path / "h.png"
    )
    report = inspection.render()
    assert (
        "shape: formatted" in report
        and "read 20 -> cleaned 20 -> deduplicated 20 -> split 18 train" in report
    )
    assert "⟦Below is an instruction" in report and "### Response:\n⟧Fruit" in report
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert mark_no_loss([10, 11, 12], [-100, 11, 12], tokenizer).startswith("⟦")


def test_preprocessed_data_saves_and_loads(tokenizer, config, alpaca_file, tmp_path):
    prepared = prepare_examples(alpaca_file, tokenizer, config())
    save_preprocessed_data(prepared, tmp_path / "kept")
    loaded = load_preprocessed_data(tmp_path / "kept")
    assert loaded.train[:] == prepared.train[:] and loaded.counts == prepared.counts
    with pytest.raises(DataError, match="is not preprocessed tuneforge data"):
        load_preprocessed_data(tmp_path)


def test_cli_inspect_prints_the_report(tokenizer, alpaca_file, tmp_path, capsys, monkeypatch):
    from tuneforge.cli import data as cli_data
    from tuneforge.cli import dispatch

    monkeypatch.setattr(cli_data, "_tokenizer", lambda config: tokenizer)
    parser = argparse.ArgumentParser(allow_abbrev=False)
    cli_data.add_data_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "data",
            "inspect",
            str(alpaca_file),
            "--cutoff_len",
            "64",
            "--overlap_len",
            "8",
            "--histogram",
            str(tmp_path / "h.png"),
            "--examples",
            "1",
        ]
    )
    assert dispatch(args) == 0
    assert "records per template" in capsys.readouterr().out
    (tmp_path / "run.yaml").write_text(f"data: {alpaca_file}\ncutoff_len: 64\noverlap_len: 8\n")
    assert dispatch(parser.parse_args(["data", "inspect", str(tmp_path / "run.yaml")])) == 0
    assert "records per template" in capsys.readouterr().out  # the config's data, not the YAML as text
    with pytest.raises(DataError, match="format file 'nope' does not exist"):
        dispatch(parser.parse_args(["data", "prepare", str(alpaca_file), "--format_file", "nope"]))


def test_chat_records_train_only_on_assistant_turns(tokenizer, config, tmp_path):
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    (tmp_path / "chat.jsonl").write_text(json.dumps(chat) + "\n")
    prepared = prepare_examples(tmp_path / "chat.jsonl", tokenizer, config(cutoff_len=128))
    example = prepared.train[0]
    trained = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != -100]
    assert prepared.shape == "chat" and tokenizer.decode(trained) == "Hello!<|im_end|>\n"


def test_worker_processes_give_the_same_examples(tokenizer, config, tmp_path):
    (tmp_path / "many.txt").write_text("".join(f"example line number {i}\n" for i in range(200)))
    one = prepare_examples(tmp_path / "many.txt", tokenizer, config(), use_cache=False)
    two = prepare_examples(tmp_path / "many.txt", tokenizer, config(num_proc=2), use_cache=False)
    assert one.train[:] == two.train[:] and len(one.train) == 200


def test_dedup_and_diversity_stages_are_counted(tokenizer, config, tmp_path):
    rows = [{"text": f"cheese sandwich recipe {i % 5} with bread and cheddar"} for i in range(10)]
    rows += [{"text": f"rocket launch {i} to orbit with fuel and big engines"} for i in range(4)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    prepared = prepare_examples(
        tmp_path / "d.jsonl", tokenizer, config(dedup="exact", diversity_clusters=2, max_per_cluster=3)
    )
    assert prepared.counts["read"] == 14 and prepared.counts["deduplicated"] == 9
    assert prepared.counts["selected"] == 6 and sorted(prepared.report["clusters"]["sizes"]) == [4, 5]


def test_inspect_names_what_was_chunked_raw_text_or_text_records(tokenizer, config, tmp_path):
    prose = "The river ran past the mill.\nIts wheel turned all night.\n" * 30
    (tmp_path / "notes.txt").write_text(prose)
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"text": prose}) + "\n" for _ in range(2)))
    raw = inspect_data(tmp_path / "notes.txt", tokenizer, config(format="raw", cutoff_len=32), n_examples=0)
    text = inspect_data(records, tokenizer, config(cutoff_len=32), n_examples=0)
    assert "\nraw text: " in raw.render() and "text records:" not in raw.render()
    assert text.prepared.shape == "text" and "\ntext records: " in text.render()
    assert "raw text:" not in text.render()
