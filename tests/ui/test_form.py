"""The Train LoRA form gives recipe auto the same freedom as the CLI: only the fields a person changed count."""

from __future__ import annotations

from tuneforge.config import RunConfig, load_config
from tuneforge.defaults import AUTO_CHOSEN
from tuneforge.ui.form import FORM_FIELDS, config_widget, form_values, shown_value


def form_widgets() -> dict:
    import gradio as gr

    with gr.Blocks():
        return {name: config_widget(name) for name in FORM_FIELDS}


def untouched_form() -> dict:
    """What a browser sends for the form as it opens: each widget's own value (a number box sends a number:
    gr.Number shows an empty value as 0 and sends 0 back)."""
    return {name: widget.value for name, widget in form_widgets().items()}


def test_an_untouched_form_leaves_every_automatic_choice_to_the_recipe():
    values = form_values(untouched_form())
    assert set(AUTO_CHOSEN) & set(FORM_FIELDS) and not set(values) & set(AUTO_CHOSEN)
    config = load_config(None, {**values, "data": "notes.txt"})  # valid as it opens (it was not: 0 < 1)
    assert config.recipe == "auto" and not set(config.given_keys) & set(AUTO_CHOSEN)
    assert config.overlap_len is None and config.batch_size is None and config.save_steps is None


def test_no_setting_that_can_be_empty_is_a_number_box():
    import gradio as gr

    for name, widget in form_widgets().items():
        assert widget.value is not None or not isinstance(widget, gr.Number), name


def test_a_changed_field_is_given_and_wins_over_the_recipe():
    form = untouched_form()
    form.update(rank="64", target_modules="q_proj,k_proj", recipe="textgen", batch_size=" 8 ")
    config = load_config(None, {**form_values(form), "data": "notes.txt"})
    assert config.rank == 64 and config.target_modules == ["q_proj", "k_proj"] and config.recipe == "textgen"
    assert config.batch_size == 8
    assert {"rank", "target_modules", "recipe"} <= set(config.given_keys) and "alpha" not in config.given_keys


def test_a_value_equal_to_textgens_own_is_given_too():
    """The form showed textgen's values for the keys recipe auto chooses, so typing one of them (rank 32)
    counted as untouched and recipe auto chose another."""
    form = untouched_form()
    form.update(rank="32", packing="false")
    values = form_values(form)
    assert values["rank"] == "32" and values["packing"] == "false"
    config = load_config(None, {**values, "data": "notes.txt"})
    assert config.rank == 32 and config.packing is False and {"rank", "packing"} <= set(config.given_keys)


def test_compile_can_be_left_to_the_run_or_turned_off():
    """A checkbox could not say 'not given': unticked was compile's default, so the run compiled anyway."""
    untouched = load_config(None, {**form_values(untouched_form()), "data": "notes.txt"})
    assert "compile" not in untouched.given_keys  # the run decides after timing its first steps
    form = untouched_form()
    form.update(compile="false")
    off = load_config(None, {**form_values(form), "data": "notes.txt"})
    assert off.compile is False and "compile" in off.given_keys
    assert shown_value("compile", True) == "true"  # copied parameters show it as given


def test_copied_parameters_fill_the_form_as_given_values():
    saved = RunConfig(rank=16, packing=True, batch_size=8, target_modules=["all-linear"], overlap_len=0)
    form = untouched_form()
    form.update({name: shown_value(name, getattr(saved, name)) for name in FORM_FIELDS})
    config = load_config(None, {**form_values(form), "data": "notes.txt"})
    assert (config.rank, config.packing, config.batch_size, config.overlap_len) == (16, True, 8, 0)
    assert config.target_modules == ["all-linear"]


def test_an_untouched_form_gets_every_choice_tuneforge_train_makes():
    """An empty max_steps (None) and a warmup_steps of 0 were sent as given, so the recipe chose no epochs and
    no warm-up for a form left as it opened, unlike `tuneforge train --data FILE`."""
    from tuneforge.defaults import DataStats, Machine, choose_defaults

    data, machine = DataStats("lines", examples=300, tokens=300 * 12), Machine("cpu", 2)
    from_form = load_config(None, {**form_values(untouched_form()), "data": "notes.txt"})
    from_cli = load_config(None, {"data": "notes.txt"})
    assert [c.describe() for c in choose_defaults(from_form, data, machine)[1]] == [
        c.describe() for c in choose_defaults(from_cli, data, machine)[1]
    ]
    assert {"epochs", "warmup_ratio"} <= {c.key for c in choose_defaults(from_form, data, machine)[1]}
