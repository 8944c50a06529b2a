"""The web UI: tabs over tuneforge's core, served safely (loopback by default, Host/Origin guard, login).

    from tuneforge.ui import launch
    launch(project_dir=".", port=7860)                               # http://127.0.0.1:7860
    launch(host="0.0.0.0", auth="alice:s3cret", project_dir="~/tf")  # another address needs auth

`build_app(project_dir)` returns the gr.Blocks alone (tests); `serve(...)` runs it in a background thread and
returns the running server, `launch(...)` runs it until Ctrl-C. Training jobs keep running either way.
"""

from __future__ import annotations

import os
import threading
import time
import webbrowser
from pathlib import Path

from tuneforge.ui.project import Project
from tuneforge.ui.security import HostOriginGuard, allowed_hosts, check_bind, parse_auth
from tuneforge.ui.workspace import Workspace

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported anywhere: no calls home


def build_app(
    project_dir: str | Path = ".", *, trust_remote_code: bool = False, workspace: Workspace | None = None
):
    """The gr.Blocks of the whole UI for `project_dir` (its datasets/, models/, loras/, runs/ are created)."""
    import gradio as gr

    from tuneforge.ui.evaluate_tabs import compare_tab, perplexity_tab
    from tuneforge.ui.model_tab import model_tab
    from tuneforge.ui.text_tabs import chat_tab, logits_tab, notebook_tab, parameters_tab
    from tuneforge.ui.training_tab import training_tab

    workspace = workspace or Workspace(Project(Path(project_dir).expanduser()), trust_remote_code)
    with gr.Blocks(title="tuneforge", analytics_enabled=False) as demo:
        gr.Markdown(f"## tuneforge — project `{workspace.project.root}`")
        with gr.Tabs():
            with gr.Tab("Model", id="model"):
                refreshed = model_tab(workspace)
            with gr.Tab("Training", id="training"), gr.Tabs():
                with gr.Tab("Train LoRA", id="train-lora"):
                    refreshed += training_tab(workspace)
                with gr.Tab("Perplexity evaluation", id="perplexity"):
                    refreshed += perplexity_tab(workspace)
            with gr.Tab("Parameters", id="parameters", render=False) as parameters:
                settings = parameters_tab()
            with gr.Tab("Notebook", id="notebook"):
                notebook_text = notebook_tab(workspace, settings)
            with gr.Tab("Chat", id="chat"):
                chat_tab(workspace, settings)
            parameters.render()
            with gr.Tab("Logits", id="logits"):
                logits_tab(workspace, notebook_text)
            with gr.Tab("Compare", id="compare"):
                refreshed += compare_tab(workspace)
        # every page shows what is there now (the loaded model, new runs, datasets and LoRAs), not what was
        # there when the UI started
        # (components, function giving their updates): the same function as each list's 🔄 where it has one
        demo.load(
            lambda: [update for _, refresh in refreshed for update in refresh()],
            None,
            [component for components, _ in refreshed for component in components],
            show_progress="hidden",
            api_name=False,  # no API route
        )
    demo.workspace = workspace
    return demo


# the data preview's long lines (the memory estimate) wrap instead of running out of the pane
CSS = "#preview-text pre, #preview-text code { white-space: pre-wrap; word-break: break-word; }"


def server_app(demo, *, host: str, port: int, auth: str | None, max_upload_mb: int = 50):
    """A FastAPI app serving `demo` behind the Host/Origin guard, with the login and the upload limit."""
    import gradio as gr
    from fastapi import FastAPI

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(HostOriginGuard, allowed_hosts=allowed_hosts(host, port))
    credentials = parse_auth(auth)
    demo.queue(default_concurrency_limit=1)
    mounted = gr.mount_gradio_app(
        app,
        demo,
        path="",
        server_name=host,
        server_port=port,
        auth=credentials,
        max_file_size=f"{int(max_upload_mb)}mb",
        allowed_paths=[],
        ssr_mode=False,
        footer_links=[],
        css=CSS,
        show_error=True,
    )
    # gradio checks that a file named in a request was really uploaded only once the Blocks "launched";
    # mount_gradio_app never sets that, so without it any server file could be named as an upload.
    demo.has_launched = True
    return mounted


class RunningServer:
    """A UI served in a background thread; `url` to reach it, `close()` to stop it."""

    def __init__(self, server, thread: threading.Thread, url: str, demo):
        self.server, self.thread, self.url, self.demo = server, thread, url, demo

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: str | None = None,
    project_dir: str | Path = ".",
    trust_remote_code: bool = False,
    max_upload_mb: int = 50,
) -> RunningServer:
    """Start the UI in a background thread (refusing a non-loopback host without auth) and return it."""
    import uvicorn

    check_bind(host, auth)
    parse_auth(auth)
    demo = build_app(project_dir, trust_remote_code=trust_remote_code)
    app = server_app(demo, host=host, port=port, auth=auth, max_upload_mb=max_upload_mb)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True, name="tuneforge-ui")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise OSError(f"the UI could not start on {host}:{port} (is the port in use?)")
        time.sleep(0.05)
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(server, thread, f"http://{shown}:{port}", demo)


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: str | None = None,
    project_dir: str | Path = ".",
    trust_remote_code: bool = False,
    max_upload_mb: int = 50,
    open_browser: bool = False,
) -> None:
    """Serve the UI until Ctrl-C. Running training jobs are left running and are shown again next time."""
    running = serve(host, port, auth, project_dir, trust_remote_code, max_upload_mb)
    print(
        f"tuneforge UI: {running.url}  (project {running.demo.workspace.project.root}; Ctrl-C stops the UI, "
        "not training jobs)",
        flush=True,
    )
    if open_browser:
        webbrowser.open(running.url)
    try:
        while running.thread.is_alive():
            running.thread.join(timeout=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        running.close()
