"""Notebook, Chat, Parameters and Logits: try the loaded model (and its LoRA) on your own text.

    with gr.Blocks() as demo:
        settings = parameters_tab()          # the sampling settings every generation reads
        notebook_tab(workspace, settings)

Generation streams piece by piece through `LLM.stream`; Stop cancels the stream in the page.
"""

from __future__ import annotations

from tuneforge.ui.handlers import shows_errors
from tuneforge.ui.workspace import Workspace

# (name, label, default, minimum, maximum, step) — text-generation-webui's Parameters tab, seed 000's values.
SAMPLING = (
    ("max_new_tokens", "Max new tokens", 20, 1, 4096, 1),
    ("temperature", "Temperature", 0.5, 0.01, 5.0, 0.01),
    ("top_k", "Top-k (0 = off)", 50, 0, 500, 1),
    ("top_p", "Top-p (1 = off)", 1.0, 0.01, 1.0, 0.01),
    ("min_p", "Min-p (0 = off)", 0.0, 0.0, 0.99, 0.01),
    ("repetition_penalty", "Repetition penalty", 1.0, 0.5, 3.0, 0.01),
    ("no_repeat_ngram_size", "No repeat n-gram size (0 = off)", 0, 0, 20, 1),
)
SETTING_NAMES = tuple(s[0] for s in SAMPLING) + ("do_sample", "seed")


def parameters_tab() -> list:
    import gradio as gr

    widgets: list = []  # sliders, a checkbox and a number
    with gr.Row():
        with gr.Column():
            for name, label, default, low, high, step in SAMPLING:
                widgets.append(
                    gr.Slider(low, high, value=default, step=step, label=label, elem_id=f"param-{name}")
                )
        with gr.Column():
            widgets.append(
                gr.Checkbox(
                    value=True,
                    label="Sample (off: greedy, always the most likely token)",
                    elem_id="param-do_sample",
                )
            )
            widgets.append(
                gr.Number(
                    value=-1, precision=0, label="Seed (-1: a different draw each time)", elem_id="param-seed"
                )
            )
    return widgets


def settings_from(values) -> dict:
    settings = dict(zip(SETTING_NAMES, values, strict=True))
    for name in ("max_new_tokens", "top_k", "no_repeat_ngram_size"):
        settings[name] = int(settings[name])
    seed = settings.pop("seed")
    settings["seed"] = None if seed is None or int(seed) < 0 else int(seed)
    return settings


def notebook_tab(workspace: Workspace, settings: list):
    import gradio as gr

    text = gr.Textbox(label="Notebook", value="To be or not to", lines=12, elem_id="notebook-text")
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id="notebook-generate")
        regenerate = gr.Button("Regenerate", elem_id="notebook-regenerate")
        stop = gr.Button("Stop", variant="stop", elem_id="notebook-stop")
    prompt = gr.State("")  # the text before the last generation, for Regenerate

    @shows_errors
    def run(current: str, *values):
        llm = workspace.require()
        produced = current
        yield produced, current
        for piece in llm.stream(current, **settings_from(values)):
            produced += piece
            yield produced, current

    @shows_errors
    def rerun(previous: str, current: str, *values):
        yield from run(previous or current, *values)

    first = generate.click(run, [text, *settings], [text, prompt], api_name="generate")
    again = regenerate.click(rerun, [prompt, text, *settings], [text, prompt], api_name="regenerate")
    stop.click(None, None, None, cancels=[first, again])
    return text


def chat_tab(workspace: Workspace, settings: list):
    import gradio as gr

    chat = gr.Chatbot(label="Chat (the model's chat template)", height=380, elem_id="chat")
    message = gr.Textbox(label="Message", placeholder="Say something", elem_id="chat-message")
    with gr.Row():
        send = gr.Button("Send", variant="primary", elem_id="chat-send")
        stop = gr.Button("Stop", variant="stop")
        clear = gr.Button("Clear")

    @shows_errors
    def reply(history: list, text: str, *values):
        llm = workspace.require()
        history = [{"role": m["role"], "content": _plain(m["content"])} for m in history or []]
        history += [{"role": "user", "content": text}]
        answer = {"role": "assistant", "content": ""}
        yield history + [answer], ""
        for piece in llm.stream(history, **settings_from(values), chat=True):
            answer["content"] += piece
            yield history + [answer], ""

    sent = send.click(reply, [chat, message, *settings], [chat, message], api_name="chat")
    submitted = message.submit(reply, [chat, message, *settings], [chat, message], api_name=False)
    stop.click(None, None, None, cancels=[sent, submitted])
    clear.click(lambda: [], None, chat, api_name=False)


def _plain(content) -> str:
    """Chatbot messages may carry content as a list of parts; the model reads plain text."""
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def logits_tab(workspace: Workspace, notebook_text):
    import gradio as gr

    text = gr.Textbox(label="Text", value="To be or not to", lines=3, elem_id="logits-text")
    with gr.Row():
        use_notebook = gr.Button("Use the notebook text")
        k = gr.Number(value=10, precision=0, minimum=1, maximum=100, label="How many tokens")
    run = gr.Button("Generate next token probabilities", variant="primary", elem_id="logits-run")
    table = gr.Dataframe(label="Next-token probabilities", interactive=False, elem_id="logits-table")

    @shows_errors
    def probabilities(current: str, count: float):
        import pandas as pd

        llm = workspace.require()
        count = max(1, min(100, int(count or 10)))
        active = workspace.active_adapter
        if active is None:
            rows = llm.next_token_probs(current, k=count)
            return pd.DataFrame(
                [(i + 1, _token(t), f"{p:.4f}") for i, (t, p) in enumerate(rows)],
                columns=["rank", "token", "probability"],
            )
        both = llm.next_token_probs(current, k=count, adapters=["base", active])
        return pd.DataFrame(
            [
                (i + 1, _token(bt), f"{bp:.4f}", _token(at), f"{ap:.4f}")
                for i, ((bt, bp), (at, ap)) in enumerate(zip(both["base"], both[active], strict=True))
            ],
            columns=["rank", "base token", "base probability", f"{active} token", f"{active} probability"],
        )

    use_notebook.click(lambda t: t, notebook_text, text, api_name=False)
    run.click(probabilities, [text, k], table, api_name="next_token_probs")


def _token(token: str) -> str:
    """A token as text with its spaces and newlines visible ('␣to', '\\n')."""
    return token.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t")
