"""The Train LoRA form gives recipe auto the same freedom as the CLI: only the fields a person changed count."""

from __future__ import annotations

from tuneforge.config import RunConfig, load_config
from tuneforge.defaults import AUTO_CHOSEN
from tuneforge.ui.form import FORM_FIELDS, form_values, shown_value


def untouched_form() -> dict:
    shown = RunConfig()
    return {
        name: shown_value(name, getattr(shown, name)) if getattr(shown, name) is not None else None
        for name in FORM_FIELDS
    }


def test_an_untouched_form_leaves_every_automatic_choice_to_the_recipe():
    values = form_values(untouched_form())
    assert set(AUTO_CHOSEN) & set(FORM_FIELDS) and not set(values) & set(AUTO_CHOSEN)
    config = load_config(None, {**values, "data": "notes.txt"})
    assert config.recipe == "auto" and not set(config.given_keys) & set(AUTO_CHOSEN)


def test_a_changed_field_is_given_and_wins_over_the_recipe():
    form = untouched_form()
    form.update(rank=64.0, target_modules="q_proj,k_proj", recipe="textgen")
    config = load_config(None, {**form_values(form), "data": "notes.txt"})
    assert config.rank == 64 and config.target_modules == ["q_proj", "k_proj"] and config.recipe == "textgen"
    assert {"rank", "target_modules", "recipe"} <= set(config.given_keys) and "alpha" not in config.given_keys
