"""The Model tab: load a model (default, a folder of models/, a hub id), apply or remove LoRAs, see what is loaded.

with gr.Blocks() as demo:
    model_tab(workspace)
"""

from __future__ import annotations

from tuneforge.config import DEVICES, PRECISIONS
from tuneforge.ui.handlers import shows_errors
from tuneforge.ui.workspace import Workspace


def model_tab(workspace: Workspace):
    import gradio as gr

    project = workspace.project
    with gr.Row():
        model = gr.Dropdown(
            label="Model",
            choices=project.models(),
            value="default",
            allow_custom_value=True,
            info="'default' (SmolLM2-135M-Instruct), a folder of models/, or a hub id "
            "(owner/name). Weights load from safetensors only.",
            elem_id="model-choice",
            scale=4,
        )
        refresh_models = gr.Button("🔄", scale=0, min_width=40, elem_id="refresh-models")
        device = gr.Dropdown(label="Device", choices=list(DEVICES), value="auto", scale=1)
        precision = gr.Dropdown(label="Precision", choices=list(PRECISIONS), value="auto", scale=1)
    with gr.Row():
        load = gr.Button("Load", variant="primary", elem_id="load-model")
        unload = gr.Button("Unload", elem_id="unload-model")
    with gr.Row():
        loras = gr.Dropdown(
            label="LoRA(s)",
            choices=project.loras(),
            value=[],
            multiselect=True,
            info="Adapters in loras/ and finished runs; the last one chosen is active.",
            elem_id="lora-choice",
            scale=4,
        )
        refresh_loras = gr.Button("🔄", scale=0, min_width=40, elem_id="refresh-loras")
    with gr.Row():
        apply = gr.Button("Apply LoRAs", variant="primary", elem_id="apply-loras")
        remove = gr.Button("Remove LoRAs", elem_id="remove-loras")
    info = gr.Markdown(workspace.describe(), elem_id="model-info")

    # .then runs after a failure too: a failed load has freed the old model, and the page must say so
    load.click(shows_errors(workspace.load), [model, device, precision], info, api_name="load_model").then(
        workspace.describe, None, info, api_name=False
    )
    unload.click(workspace.unload, None, info, api_name="unload_model")
    apply.click(shows_errors(workspace.apply_loras), loras, info, api_name="apply_loras")
    remove.click(shows_errors(workspace.remove_loras), None, info, api_name="remove_loras").then(
        lambda: gr.update(value=[]), None, loras, api_name=False
    )
    refresh_models.click(lambda: gr.update(choices=project.models()), None, model, api_name=False)
    refresh_loras.click(lambda: gr.update(choices=project.loras()), None, loras, api_name=False)
    # what a newly opened page shows (build_app refreshes these on each page load)
    return [
        ([info], lambda: (workspace.describe(),)),
        ([model], lambda: (gr.update(choices=project.models()),)),
        ([loras], lambda: (gr.update(choices=project.loras(), value=applied(workspace, project.loras())),)),
    ]


def applied(workspace: Workspace, listed: list[str] | None = None) -> list[str]:
    """The LoRAs the model holds (of those `listed`, the picker's choices), the active one last (as the
    picker's Apply makes the last one active)."""
    active = workspace.active_adapter
    held = [choice for choice in workspace.loras.values() if listed is None or choice in listed]
    return sorted(held, key=lambda choice: workspace.loras.get(active or "") == choice)
