"""Training → Train LoRA: the form, the data preview and estimate, Start / Interrupt / Resume, live progress.

    with gr.Blocks() as demo:
        training_tab(workspace)        # inside a gr.Tab

The run itself is a `tuneforge.jobs` job: its own process, writing runs/NAME/metrics.jsonl and train.log. A
gr.Timer polls those files, so a reloaded page, a second browser or a restarted UI shows the same job.
"""

from __future__ import annotations

import yaml

from tuneforge import jobs
from tuneforge.config import field_help, from_dict
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.ui.form import (
    ADVANCED_FIELDS,
    DATASET_MODES,
    FORM_FIELDS,
    FORMATTED_FIELDS,
    MAIN_FIELDS,
    OTHER_FORMATS,
    QLORA_FIELDS,
    RAW_FIELDS,
    SCRATCH_FIELDS,
    VALIDATION_FIELDS,
    TrainingForm,
    config_widget,
    shown_value,
)
from tuneforge.ui.handlers import shows_errors
from tuneforge.ui.project import DATA_SUFFIXES, Project
from tuneforge.ui.workspace import Workspace

POLL_SECONDS = 1.0


def _plot_frame(metrics: list[dict]):
    import pandas as pd

    rows = [{"step": m["step"], "loss": m["loss"], "series": "train"} for m in metrics if "loss" in m]
    validation = [
        {"step": m["step"], "loss": m["validation_loss"], "series": "validation"}
        for m in metrics
        if "validation_loss" in m
    ]
    if len(validation) > 1:  # a line plot draws no single point (a run evaluated once, at its end): the
        rows += validation  # status line above the chart says that loss; the legend would name a blank line
    if not rows:
        # no frame at all: gradio 6 draws every later line of a chart first given an empty frame with no
        # stroke (invisible), as the colour scale keeps the empty frame's domain (tests/ui/test_browser.py)
        return None
    return pd.DataFrame(rows, columns=["step", "loss", "series"]).astype(
        {"step": "int64", "loss": "float64", "series": "str"}
    )


def _status_markdown(status: jobs.JobStatus) -> str:
    name = status.run_dir.name
    lines = [f"**Run `{name}`: {status.state}**"]
    if status.step:
        lines.append(" · ".join(status.progress()))
    lines.append(status.message)
    return "\n\n".join(lines)


def _report(status: jobs.JobStatus) -> str:
    path = status.run_dir / "report.md"
    if status.running or not path.is_file():
        return ""
    text = path.read_text()
    return "\n".join(line for line in text.splitlines() if not line.startswith("![")) + "\n"


def training_tab(workspace: Workspace):
    """Build the Train LoRA sub-tab inside the current gr.Blocks context."""
    import gradio as gr

    project = workspace.project
    form = TrainingForm(workspace)
    widgets: dict = {}
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                run_name = gr.Textbox(
                    label="Name",
                    info="The run folder runs/NAME; its adapter appears in the LoRA list when it finishes.",
                    value="my-lora",
                    elem_id="run-name",
                )
                copy_from = gr.Dropdown(
                    label="Copy parameters from",
                    choices=[""] + project.runs(),
                    value="",
                    info="Fill the form with an earlier run's settings.",
                    elem_id="copy-from",
                )
                continue_lora = gr.Checkbox(
                    label="Train its LoRA further",
                    value=False,
                    info="Start from that run's adapter instead of a new one: its rank, alpha and target "
                    "modules stay; the learning rate and steps start over.",
                    elem_id="continue-lora",
                )
            with gr.Row():
                for name in MAIN_FIELDS:
                    widgets[name] = config_widget(name)
            with gr.Accordion("QLoRA settings", open=False), gr.Row():
                for name in QLORA_FIELDS:
                    widgets[name] = config_widget(name)
            with gr.Accordion("From scratch: model size", open=False), gr.Row():
                for name in SCRATCH_FIELDS:
                    widgets[name] = config_widget(name)
            with gr.Accordion("Advanced", open=False):
                for start in range(
                    0, len(ADVANCED_FIELDS), 4
                ):  # rows of 4: a checkbox keeps room for its label
                    with gr.Row():
                        for name in ADVANCED_FIELDS[start : start + 4]:
                            widgets[name] = config_widget(name)
        with gr.Column(scale=2):
            # which dataset tab is chosen; a hidden radio (not a State) so scripts can choose it too
            mode = gr.Radio(list(DATASET_MODES), value=DATASET_MODES[0], label="Dataset kind", visible=False)
            with gr.Tabs() as data_tabs:
                with gr.Tab(DATASET_MODES[0], id=DATASET_MODES[0], elem_id="raw-tab") as raw_tab:
                    with gr.Row():
                        raw_file = gr.Dropdown(
                            label="Text file",
                            choices=project.datasets(),
                            value=None,
                            elem_id="raw-file",
                            scale=4,
                        )
                        refresh = gr.Button("🔄", scale=0, min_width=40, elem_id="refresh-datasets")
                    for name in RAW_FIELDS:
                        widgets[name] = config_widget(name)
                with gr.Tab(DATASET_MODES[1], id=DATASET_MODES[1], elem_id="formatted-tab") as formatted_tab:
                    formatted_file = gr.Dropdown(label="Dataset", choices=project.datasets(), value=None)
                    format_file = gr.Dropdown(
                        label="Data format", choices=project.format_files(), value=project.format_files()[0]
                    )
                    for name in FORMATTED_FIELDS:
                        widgets[name] = config_widget(name)
                with gr.Tab(DATASET_MODES[2], id=DATASET_MODES[2], elem_id="other-tab") as other_tab:
                    other_file = gr.Dropdown(label="Data file", choices=project.datasets(), value=None)
                    other_format = gr.Dropdown(
                        label="Shape",
                        choices=list(OTHER_FORMATS),
                        value="auto",
                        info=field_help()["format"].metadata["help"],
                    )
            with gr.Accordion("Validation", open=False):
                validation_file = gr.Dropdown(
                    label="Validation data", choices=[""] + project.datasets(), value=""
                )
                for name in VALIDATION_FIELDS:
                    widgets[name] = config_widget(name)
            upload = gr.File(
                label="Add a data file to datasets/",
                file_types=list(DATA_SUFFIXES),
                type="filepath",
            )
            with gr.Row():
                preview_button = gr.Button("Preview data and estimate", elem_id="preview")
            preview = gr.Markdown(elem_id="preview-text")
    for tab, name in (
        (raw_tab, DATASET_MODES[0]),
        (formatted_tab, DATASET_MODES[1]),
        (other_tab, DATASET_MODES[2]),
    ):
        tab.select(lambda n=name: n, None, mode, show_progress="hidden")

    with gr.Row():
        start = gr.Button("Start LoRA Training", variant="primary", elem_id="start")
        interrupt = gr.Button("Interrupt", variant="stop", elem_id="interrupt")
        resume = gr.Button("Resume", elem_id="resume")
        resume_until = gr.Number(
            label="Resume until step",
            value=0,
            precision=0,
            elem_id="resume-until",
            info="0: the run's own end (its epochs or max steps); a step here becomes the run's max steps.",
        )
    status = gr.Markdown("No run yet.", elem_id="train-status")
    chart = gr.LinePlot(
        None, x="step", y="loss", color="series", title="Loss", height=300, elem_id="loss-chart"
    )
    report = gr.Markdown(elem_id="train-report")
    current = gr.State("")  # this page's run name
    shown = gr.State("")  # what the chart shows now, so an unchanged chart is not resent
    timer = gr.Timer(POLL_SECONDS)

    # which data to train on: Start reads them (TrainingForm.DATA_INPUTS), Copy parameters from sets them
    data_choices = [mode, raw_file, formatted_file, format_file, other_file, other_format, validation_file]
    inputs = [run_name, *data_choices, copy_from, continue_lora, *[widgets[name] for name in FORM_FIELDS]]
    outputs = [current, status, chart, report, shown]

    def poll(name: str, last: str):
        if not name:
            attached = jobs.attach(project.root)
            if attached is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            name = attached.name
        job = jobs.status(project.run_dir(name))
        signature = f"{name}:{len(job.metrics)}:{job.state}"
        if signature == last:
            return name, _status_markdown(job), gr.skip(), gr.skip(), last
        return name, _status_markdown(job), _plot_frame(job.metrics), _report(job), signature

    @shows_errors
    def start_training(*values):
        name, settings = form.config(values)
        run_dir = project.run_dir(name, must_exist=False)
        if (run_dir / "config.yaml").exists():
            done = jobs.status(run_dir).state == "finished"
            raise ConfigError(
                f"a run named '{name}' already exists{' and finished' if done else ''}; choose another name"
                + ("" if done else ", or Resume it")
            )
        jobs.start(settings, run_dir, cwd=project.root)
        gr.Info(f"training started in runs/{name}")
        return (name, *poll(name, "")[1:])

    @shows_errors
    def interrupt_training(name: str):
        if not name:
            raise ConfigError("no run is shown here to interrupt")
        jobs.stop(project.run_dir(name), wait=60)
        return (name, *poll(name, "")[1:])

    @shows_errors
    def resume_training(name: str, until: float | None, copied: str):
        name = run_to_resume(project, name, copied)
        if not name:
            raise ConfigError("no run is shown here to resume; pick it in Copy parameters from, or start one")
        if jobs.running_jobs(project.root):
            raise ConfigError("another training job is running; interrupt it first")
        if until and until < 0:
            raise ConfigError(
                f"Resume until step: {until:g} is not a step; give 0 for the run's own end, or a step"
            )
        overrides = {"max_steps": int(until)} if until and until > 0 else None
        jobs.resume(project.run_dir(name), overrides, cwd=project.root)
        return (name, *poll(name, "")[1:])

    def preview_data(*values):
        try:
            return preview_text(values)
        except TuneforgeError as error:  # in the pane, not only a toast: the last preview must not stay shown
            return f"**Cannot preview this data:** {error}"

    def preview_text(values: tuple) -> str:
        from tuneforge.data.inspection import inspect_data
        from tuneforge.recipe import plan_run

        _, settings = form.config(values)
        llm = workspace.require()
        # as Start runs it (a new process on the base model, no LoRA of the Model tab), defaults chosen,
        # and the data shown as that run prepares it (its chosen validation split and packing included)
        plan = plan_run(from_dict(settings), None, llm.tokenizer, llm.device)
        inspection = inspect_data(str(settings["data"]), llm.tokenizer, plan.config, n_examples=2)
        return f"```text\n{inspection.render()}\n```\n\n```text\n{plan.describe()}\n```"

    data_inputs = [data_tabs, *data_choices]

    @shows_errors
    def copy_parameters(name: str):
        if not name:
            return [gr.skip()] * (len(FORM_FIELDS) + len(data_inputs))
        saved = yaml.safe_load((project.run_dir(name) / "config.yaml").read_text()) or {}
        fields = [shown_value(field, saved[field]) if field in saved else gr.skip() for field in FORM_FIELDS]
        return fields + copied_data(saved)

    def copied_data(saved: dict) -> list:
        """The run's data file, its kind and validation file, chosen where datasets/ lists them."""
        chosen = form.copied_data(saved)
        if chosen is None:
            if saved.get("data"):
                gr.Info(f"its data ({saved['data']}) is not a file in datasets/: choose the data to train on")
            return [gr.skip()] * len(data_inputs)
        names = ["dataset_mode", "raw_file", "formatted_file", "format_file", "other_file", "other_format"]
        return [
            gr.update(selected=chosen["dataset_mode"]),  # the tab whose file Start trains on, shown
            *[chosen[name] if name in chosen else gr.skip() for name in names],
            chosen["validation_file"],
        ]

    @shows_errors
    def add_dataset(path: str | None):
        from pathlib import Path

        if not path:
            return [gr.skip()] * 4
        source = Path(path)
        named = jobs_safe_name(source.name)
        content = source.read_bytes()
        if not content.strip():
            raise ConfigError(f"{source.name} is empty: there is nothing to train on, so it was not added")
        target = project.add_dataset(named, content)
        if target.name != named:  # another file already holds the name: earlier runs read it
            gr.Info(f"datasets/{named} holds other data (earlier runs trained on it): added as {target.name}")
        else:
            gr.Info(f"added datasets/{target.name}")
        raw_list, *others = refresh_datasets()
        raw_list["value"] = target.name  # the new file chosen in the Text file list, where most uploads go
        return raw_list, *others

    def refresh_datasets():
        names = project.datasets()
        return (
            gr.update(choices=names),
            gr.update(choices=names),
            gr.update(choices=names),
            gr.update(choices=[""] + names),
        )

    start.click(start_training, inputs, outputs, api_name="start_training")
    interrupt.click(interrupt_training, current, outputs, api_name="interrupt_training")
    resume.click(resume_training, [current, resume_until, copy_from], outputs, api_name="resume_training")
    preview_button.click(preview_data, inputs, preview, api_name="preview_data")
    copy_from.change(
        copy_parameters,
        copy_from,
        [widgets[name] for name in FORM_FIELDS] + data_inputs,
        api_name="copy_parameters",
    )
    dataset_lists = [raw_file, formatted_file, other_file, validation_file]
    refresh.click(refresh_datasets, None, dataset_lists, api_name="refresh_datasets")
    upload.upload(add_dataset, upload, dataset_lists, api_name="add_dataset")
    copy_from.focus(lambda: gr.update(choices=[""] + project.runs()), None, copy_from, show_progress="hidden")
    timer.tick(poll, [current, shown], outputs, show_progress="hidden", api_name=False)

    def shown_run() -> str:
        """The run a newly opened page shows: the running one, else the newest (its report, or Resume)."""
        attached = jobs.attach(project.root, stopped=True)
        return attached.name if attached else ""

    def running_run() -> str:
        """A run training now: a newly opened page copies its parameters into the form (copy_from.change),
        so a reload mid-run shows what the job was set to, not the form's defaults."""
        running = jobs.attach(project.root)
        return running.name if running else ""

    # what a newly opened page shows (build_app refreshes these on each page load)
    def free_name() -> str:
        """my-lora, or my-lora-2, -3, ... when runs/ has it already: a new page's Start never meets an old run."""
        taken, number = set(project.runs()), 1
        while (name := "my-lora" if number == 1 else f"my-lora-{number}") in taken:
            number += 1
        return name

    return [
        ([current], lambda: (shown_run(),)),
        ([run_name], lambda: (gr.update(value=free_name()),)),
        (dataset_lists, refresh_datasets),
        ([format_file], lambda: (gr.update(choices=project.format_files()),)),
        ([copy_from], lambda: (gr.update(choices=[""] + project.runs(), value=running_run()),)),
    ]


def run_to_resume(project: Project, shown: str, copied: str) -> str:
    """The run Resume continues: the one the page shows, unless it finished (the newest run is shown) and
    another is picked in Copy parameters from."""
    if copied and (not shown or jobs.status(project.run_dir(shown)).state == "finished"):
        return copied
    return shown


def jobs_safe_name(name: str) -> str:
    """An uploaded file's name reduced to letters, digits, '-', '_' and '.' (no folders, no leading dot)."""
    import re

    cleaned = re.sub(r"[^\w.-]", "_", name).lstrip(".") or "upload.txt"
    return cleaned[:100]
