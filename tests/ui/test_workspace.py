"""The UI's one loaded model: what the Model tab says is what the other tabs and Start use."""

from __future__ import annotations

import pytest

from tests.unit.evaluate.conftest import make_adapter
from tuneforge.errors import TuneforgeError
from tuneforge.ui.project import Project
from tuneforge.ui.workspace import Workspace


@pytest.fixture()
def workspace(project, tiny_model_dir):
    make_adapter(tiny_model_dir, project / "loras" / "one", 1)
    make_adapter(tiny_model_dir, project / "loras" / "two", 2)
    workspace = Workspace(Project(project))
    workspace.load("models/tiny", device="cpu", precision="fp32")
    return workspace


def test_perplexity_and_compare_leave_the_active_lora_as_the_model_tab_shows_it(workspace):
    """They made each chosen LoRA active in turn: the Logits tab then ran another LoRA than the Model tab's."""
    workspace.apply_loras(["loras/one"])
    with workspace.evaluating(["base", "loras/one", "loras/two"]) as names:
        assert names == ["base", "one", "two"]
    assert workspace.active_adapter == "one" and workspace.loras == {"one": "loras/one"}
    assert workspace.require().adapters == ["one"]  # the LoRA loaded for the evaluation alone is gone
    workspace.remove_loras()
    with workspace.evaluating(["loras/two"]) as names:
        assert names == ["two"] and workspace.require().active_adapter == "two"
    assert workspace.active_adapter is None and "none (base model)" in workspace.describe()


def test_apply_with_nothing_chosen_is_the_base_model_alone(workspace):
    workspace.apply_loras(["loras/one", "loras/two"])
    assert workspace.active_adapter == "two"
    assert "none (base model)" in workspace.apply_loras([])  # as text-generation-webui applies an empty list
    assert workspace.require().adapters == []


def test_a_failed_load_leaves_no_model_for_start_to_train(workspace):
    """The old model's name survived a failed load, so Start trained it while the page said none was loaded."""
    with pytest.raises(TuneforgeError):
        workspace.load("nobody/nonexistent-model")  # a hub id: the old model is freed before it fails
    assert workspace.model_name is None and workspace.describe() == "No model loaded."


def test_a_new_page_shows_the_applied_loras_with_the_active_one_last(workspace):
    """The picker opened empty while a LoRA was active, so Apply then dropped it."""
    from tuneforge.ui.model_tab import applied

    workspace.apply_loras(["loras/two", "loras/one"])
    workspace.require().set_adapter("two")
    assert applied(workspace) == ["loras/one", "loras/two"]
    workspace.apply_loras(applied(workspace))  # Apply on the page as it opened keeps what was active
    assert workspace.active_adapter == "two"


def test_an_upload_never_replaces_data_earlier_runs_trained_on(project):
    """Uploading another file named data.txt replaced the data of every run that trained on it, silently."""
    datasets = Project(project)
    before = (project / "datasets" / "data.txt").read_bytes()
    assert datasets.add_dataset("data.txt", before) == project / "datasets" / "data.txt"  # the same: kept
    assert datasets.add_dataset("data.txt", b"other notes\n").name == "data-1.txt"
    assert datasets.add_dataset("data.txt", b"more notes\n").name == "data-2.txt"
    assert datasets.add_dataset("notes.tar.gz", b"x").name == "notes.tar.gz"
    assert datasets.add_dataset("notes.tar.gz", b"y").name == "notes-1.tar.gz"
    assert (project / "datasets" / "data.txt").read_bytes() == before
    assert (project / "datasets" / "data-1.txt").read_bytes() == b"other notes\n"
    with pytest.raises(TuneforgeError, match="choose a data file first"):  # not "'' is not available"
        datasets.dataset("")


def test_train_its_lora_further_starts_the_run_from_the_copied_runs_adapter(
    workspace, project, tiny_model_dir
):
    """Seed 003: "resume a prior run — use Copy parameters from to select your LoRA, and edit parameters"."""
    from tests.ui.test_form import untouched_form
    from tuneforge.config import load_config
    from tuneforge.ui.form import FORM_FIELDS, TrainingForm

    make_adapter(tiny_model_dir, project / "runs" / "earlier" / "adapter", 3)
    (project / "runs" / "full").mkdir()
    form, fields = TrainingForm(workspace), untouched_form()

    def settings(copy_from: str, further: bool, **changed) -> dict:
        data = dict(
            run_name="again",
            dataset_mode="Raw text file",
            raw_file="data.txt",
            format_file=None,
            other_file=None,
            other_format="auto",
            validation_file="",
            formatted_file=None,
            copy_from=copy_from,
            continue_lora=further,
        )
        values = [data[name] for name in TrainingForm.DATA_INPUTS]
        return form.config(tuple(values + [{**fields, **changed}[name] for name in FORM_FIELDS]))[1]

    assert "from_adapter" not in settings("earlier", False)  # copying parameters alone trains a new LoRA
    chosen = settings("earlier", True, learning_rate=1e-4)
    assert chosen["from_adapter"] == str(project / "runs" / "earlier" / "adapter")
    assert load_config(None, chosen).learning_rate == 1e-4
    with pytest.raises(TuneforgeError, match="pick the run whose LoRA to train further in Copy parameters"):
        settings("", True)
    with pytest.raises(TuneforgeError, match="run 'full' has no LoRA adapter to train further"):
        settings("full", True)
    # a shape the adapter does not have is refused before a job starts, an unticked box included
    with pytest.raises(TuneforgeError, match="has rank 4 but rank 8 was asked for"):
        settings("earlier", True, rank="8")
    with pytest.raises(TuneforgeError, match="has use_dora False but use_dora True was asked for"):
        settings("earlier", True, use_dora=True)
    with pytest.raises(TuneforgeError):
        settings("../loras/one", True)  # only runs/ folders


def test_copied_data_chooses_the_runs_file_kind_and_format_where_datasets_lists_them(workspace, project):
    from tuneforge.ui.form import TrainingForm

    form, datasets = TrainingForm(workspace), project / "datasets"
    (datasets / "formats").mkdir()
    (datasets / "formats" / "mine.json").write_text('{"instruction,output": "%instruction%: %output%"}')
    (datasets / "rp.json").write_text("[]")
    raw = form.copied_data({"data": str(datasets / "data.txt"), "format": "raw"})
    assert raw == {"dataset_mode": "Raw text file", "raw_file": "data.txt", "validation_file": ""}
    formatted = {"data": str(datasets / "rp.json"), "format": "formatted", "format_file": "alpaca-format"}
    assert form.copied_data(formatted)["format_file"] == "alpaca-format"
    own = form.copied_data({**formatted, "format_file": str(datasets / "formats" / "mine.json")})
    assert own["formatted_file"] == "rp.json" and own["format_file"] == "formats/mine.json"
    other = form.copied_data(
        {"data": str(datasets / "rp.json"), "validation_data": str(datasets / "data.txt")}
    )
    assert (other["other_format"], other["validation_file"]) == ("auto", "data.txt")  # format: auto, unsaid
    assert form.copied_data({"data": "/elsewhere/notes.txt", "format": "raw"}) is None  # not in datasets/
    assert form.copied_data({**formatted, "format_file": "/elsewhere/f.json"}) is None


def test_a_wrong_number_in_the_form_is_named_by_its_label_and_key(workspace):
    """Gradio's own bounds said "Value 5 is greater than maximum value 0.99." without naming the field."""
    from tests.ui.test_form import untouched_form
    from tuneforge.ui.form import FORM_FIELDS, TrainingForm

    data = dict(run_name="r", dataset_mode="Raw text file", raw_file="data.txt", other_format="auto")
    values = [data.get(name) for name in TrainingForm.DATA_INPUTS]
    fields = {**untouched_form(), "lora_dropout": 5}
    with pytest.raises(
        TuneforgeError, match=r"^LoRA Dropout: lora_dropout must be >= 0.0 and <= 0.99; got 5"
    ):
        TrainingForm(workspace).config(tuple(values + [fields[name] for name in FORM_FIELDS]))
