"""Training → Perplexity evaluation, and Compare: base vs LoRAs/checkpoints on the same prompts and seeds.

with gr.Blocks() as demo:
    perplexity_tab(workspace)     # the table is the project's perplexity-history.jsonl, kept across restarts
    compare_tab(workspace)
"""

from __future__ import annotations

from tuneforge.errors import ConfigError
from tuneforge.ui.handlers import shows_errors
from tuneforge.ui.workspace import Workspace

HISTORY_FILE = "perplexity-history.jsonl"
HISTORY_COLUMNS = ["time", "label", "data", "perplexity", "loss", "tokens", "max_length", "stride"]


def history_table(workspace: Workspace):
    import pandas as pd

    from tuneforge.evaluate.perplexity import read_history

    records = read_history(workspace.project.root / HISTORY_FILE)
    frame = pd.DataFrame(records, columns=HISTORY_COLUMNS)
    if not frame.empty:
        frame["perplexity"] = frame["perplexity"].round(3)
        frame["loss"] = frame["loss"].round(4)
    return frame.iloc[::-1]  # newest first


def perplexity_tab(workspace: Workspace):
    import gradio as gr

    project = workspace.project
    with gr.Row():
        models = gr.Dropdown(
            label="Models / LoRAs",
            choices=["base"] + project.loras(),
            value=["base"],
            multiselect=True,
            elem_id="ppl-models",
        )
        files = gr.Dropdown(
            label="Text files (datasets/)",
            choices=project.text_datasets(),
            value=[],
            multiselect=True,
            elem_id="ppl-files",
        )
        refresh = gr.Button("🔄", scale=0, min_width=40)
    with gr.Row():
        stride = gr.Number(label="Stride", value=512, precision=0, minimum=1)
        max_length = gr.Number(
            label="Max length (0: the model's context, at most 1024)", value=0, precision=0, minimum=0
        )
    run = gr.Button("Evaluate perplexity", variant="primary", elem_id="ppl-run")
    table = gr.Dataframe(
        value=history_table(workspace),
        label="Perplexity history (kept across restarts)",
        interactive=False,
        elem_id="ppl-table",
    )

    @shows_errors
    def evaluate(
        chosen: list[str], names: list[str], stride_value: float, length: float, progress=gr.Progress()
    ):
        llm = workspace.require()
        if not chosen or not names:
            raise ConfigError("choose at least one model/LoRA and one text file")
        paths = [project.dataset(name) for name in names]
        limit = int(length) or None
        results = []
        with workspace.evaluating(chosen) as adapters:
            for path in paths:
                results += llm.perplexity(
                    str(path),
                    adapters=adapters,
                    stride=min(int(stride_value), limit or 10**9),
                    max_length=limit,
                    progress=lambda done, total, name=path.name: progress(
                        (done, total), desc=f"{name}", unit="tokens"
                    ),
                )
        from tuneforge.evaluate.perplexity import append_history

        append_history(project.root / HISTORY_FILE, results)  # all or none: a bad file's error leaves no row
        return history_table(workspace)

    run.click(evaluate, [models, files, stride, max_length], table, api_name="perplexity")

    def lists():
        return gr.update(choices=["base"] + project.loras()), gr.update(choices=project.text_datasets())

    refresh.click(lists, None, [models, files], api_name=False)
    # what a newly opened page shows (build_app refreshes these on each page load)
    return [([models, files], lists), ([table], lambda: (history_table(workspace),))]


def compare_tab(workspace: Workspace):
    import gradio as gr

    project = workspace.project
    prompts = gr.Textbox(
        label="Prompts (one per line)", value="To be or not to", lines=3, elem_id="compare-prompts"
    )
    with gr.Row():
        variants = gr.Dropdown(
            label="Base and adapters",
            choices=["base"] + project.loras(),
            value=["base"],
            multiselect=True,
            elem_id="compare-variants",
        )
        run_choice = gr.Dropdown(label="Add a run's checkpoints", choices=[""] + project.runs(), value="")
        refresh = gr.Button("🔄", scale=0, min_width=40, elem_id="compare-refresh")
    with gr.Row():
        seeds = gr.Textbox(label="Seeds", value="0,1")
        heldout = gr.Dropdown(
            label="Held-out text for perplexity (optional)", choices=[""] + project.text_datasets(), value=""
        )
        max_new_tokens = gr.Number(label="Max new tokens", value=20, precision=0, minimum=1, maximum=512)
    run = gr.Button("Compare", variant="primary", elem_id="compare-run")
    result = gr.Markdown(elem_id="compare-result")
    gallery = gr.Markdown(label="Checkpoint gallery")

    @shows_errors
    def add_checkpoints(run: str, chosen: list[str]):
        if not run:
            return gr.skip(), ""
        checkpoints = project.checkpoints(run)
        page = project.run_dir(run) / "gallery.md"
        text = page.read_text() if page.is_file() else "(no gallery: train with compare_at_save on)"
        return gr.update(
            choices=["base"] + project.loras() + checkpoints, value=list(chosen) + checkpoints
        ), text

    @shows_errors
    def compare(text: str, chosen: list[str], seed_text: str, heldout_name: str, tokens: float):
        llm = workspace.require()
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines or not chosen:
            raise ConfigError("give at least one prompt and choose base and/or adapters")
        try:
            seed_list = [int(s) for s in seed_text.replace(" ", "").split(",") if s]
        except ValueError:
            raise ConfigError(f"seeds must be whole numbers separated by commas, got '{seed_text}'") from None
        path = str(project.dataset(heldout_name)) if heldout_name else None
        with workspace.evaluating(chosen) as names:
            comparison = llm.compare(
                lines, adapters=names, seeds=seed_list or [0], heldout=path, max_new_tokens=int(tokens)
            )
        return comparison.to_markdown()

    run_choice.change(add_checkpoints, [run_choice, variants], [variants, gallery], api_name=False)
    run.click(compare, [prompts, variants, seeds, heldout, max_new_tokens], result, api_name="compare")

    def lists():
        return (
            gr.update(choices=["base"] + project.loras()),
            gr.update(choices=[""] + project.runs()),
            gr.update(choices=[""] + project.text_datasets()),
        )

    refresh.click(lists, None, [variants, run_choice, heldout], api_name=False)
    return [([variants, run_choice, heldout], lists)]
