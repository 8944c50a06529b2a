"""The web UI under attack through its HTTP API (gradio_client and raw HTTP, no browser), served on 127.0.0.1.

    python -m pytest tests/reliability/test_ui_attacks.py -q

Complements tests/ui/test_http.py (each escape refused, nothing started): here each refusal must read the same
whether or not its target exists outside, the file-serving route must serve nothing outside its folders, and a
foreign Origin must change nothing, where the same request from the page itself would load, apply or train.
Every escape points at something real: a model folder, a LoRA and a secret file outside the project.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

import httpx
import pytest

pytest.importorskip("gradio", reason="the UI needs the ui extra: pip install -e '.[ui]'")

from tests.ui.conftest import RAW_TEXT, free_port  # noqa: E402
from tuneforge import jobs  # noqa: E402
from tuneforge.ui.project import HUB_ID  # noqa: E402

SECRET = "do not read"
EVIL = "http://evil.example"


def lora_folder(model_dir: Path, folder: Path) -> Path:
    """A real LoRA adapter (safetensors) for the tiny model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, tiny_model_dir) -> Path:
    """A project beside an `outside/` folder holding a secret, a model and a LoRA, with links out of each
    project folder: `out-link` to outside/ (or its model / LoRA), `dead-link` to a missing outside path."""
    base = tmp_path_factory.mktemp("attacked")
    outside, root = base / "outside", base / "project"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    shutil.copytree(tiny_model_dir, outside / "model")
    lora_folder(tiny_model_dir, outside / "lora")
    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    lora_folder(tiny_model_dir, root / "loras" / "tiny-lora")
    (root / "datasets").mkdir()
    (root / "runs").mkdir()
    (root / "datasets" / "data.txt").write_text(RAW_TEXT)
    targets = {"datasets": outside, "models": outside / "model", "loras": outside / "lora", "runs": outside}
    for folder, target in targets.items():
        os.symlink(target, root / folder / "out-link")
        os.symlink(outside / "missing", root / folder / "dead-link")
    os.symlink(outside / "secret.txt", root / "datasets" / "secret.txt")
    os.symlink(outside / "missing.txt", root / "datasets" / "gone.txt")
    return root


@pytest.fixture(scope="module")
def server(attacked):
    """One UI for the module (starting and stopping one costs seconds)."""
    from tuneforge.ui import serve

    running = serve(port=free_port(), project_dir=attacked)
    yield running
    running.close()


@pytest.fixture()
def served(server, attacked):
    """The module's UI with nothing loaded; no job is left running after the test."""
    server.demo.workspace.unload()
    yield server
    for run_dir in jobs.running_jobs(attacked):
        jobs.stop(run_dir, wait=60)


@pytest.fixture()
def connect(served):
    """connect(**headers) -> a gradio_client for the served UI, closed after the test (else the server waits
    for its open event stream when it stops)."""
    from gradio_client import Client

    made = []

    def connect(**headers):
        made.append(Client(served.url, verbose=False, headers=headers or None))
        return made[-1]

    yield connect
    for api in made:
        api.close()


_FORM: list = []  # /start_training's defaults in input order, read once


def start_values(url: str, **fields) -> list:
    """/start_training's inputs in order: the training tab's data choices and config fields by name, the
    rest as the form has them."""
    from tuneforge.ui.form import FORM_FIELDS, TrainingForm

    names = TrainingForm.DATA_INPUTS + FORM_FIELDS
    if not _FORM:
        info = httpx.get(url + "/gradio_api/info").json()["named_endpoints"]["/start_training"]
        _FORM.extend(p.get("parameter_default") for p in info["parameters"])
        assert len(_FORM) == len(names)
    values = list(_FORM)
    for name, value in fields.items():
        values[names.index(name)] = value
    return values


def call(url: str, endpoint: str, *data) -> tuple[str, object]:
    """One call of the UI's HTTP API as a script makes it (POST /gradio_api/call/NAME, then read its event
    stream): the last event's name ('complete' or 'error') and data."""
    sent = httpx.post(f"{url}/gradio_api/call/{endpoint}", json={"data": list(data)}, timeout=60)
    sent.raise_for_status()
    stream = httpx.get(f"{url}/gradio_api/call/{endpoint}/{sent.json()['event_id']}", timeout=120).text
    event, payload = [e for e in re.findall(r"event: (\w+)\ndata: (.*)", stream) if e[0] != "heartbeat"][-1]
    return event, json.loads(payload)


def refusal(url: str, endpoint: str, *data) -> str:
    """The message the page shows for a refused call (the call must be refused)."""
    event, payload = call(url, endpoint, *data)
    assert event == "error", (endpoint, data, payload)
    return payload["error"]


# (a name whose target exists outside, the same name with a missing target), relative to a project folder
ESCAPES = [
    ("../outside/secret.txt", "../outside/missing.txt"),
    ("../../../../../../etc/passwd", "../../../../../../etc/no-such-file"),
    ("/etc/passwd", "/etc/no-such-file"),
    ("{outside}/secret.txt", "{outside}/missing.txt"),
    ("..%2Foutside%2Fsecret.txt", "..%2Foutside%2Fmissing.txt"),
    ("%2E%2E/outside/secret.txt", "%2E%2E/outside/missing.txt"),
    ("..\\outside\\secret.txt", "..\\outside\\missing.txt"),
    ("../outside/secret.txt\x00.txt", "../outside/missing.txt\x00.txt"),
    ("out-link/secret.txt", "out-link/missing.txt"),
    ("out-link", "dead-link"),
]


def same_reading(message_a: str, name_a: str, message_b: str, name_b: str, outside: Path) -> None:
    """The two refusals say the same once the name typed is blanked, and neither shows anything outside."""

    def blank(message: str, name: str) -> str:
        printable = "".join(c if c.isprintable() else "?" for c in name[:80])
        for shown in (repr(name), repr(name)[1:-1], name, name[:80], printable):  # as each layer quotes it
            message = message.replace(shown, "NAME")
        return message

    a, b = blank(message_a, name_a), blank(message_b, name_b)
    assert a == b, (name_a, message_a, name_b, message_b)
    assert SECRET not in a and str(outside) not in a, a


def test_every_refusal_reads_the_same_whether_or_not_its_target_exists(served, attacked):
    """Each escape as dataset, format file, model, LoRA and run name: refused, with the same
    message for an existing and a missing target; no model, LoRA or job from outside is ever taken."""
    outside = attacked.parent / "outside"
    runs_before = sorted(p.name for p in (attacked / "runs").iterdir())
    url = served.url
    assert call(url, "load_model", "models/tiny", "cpu", "fp32")[0] == "complete"
    data = dict(dataset_mode="Raw text file", raw_file="data.txt", max_steps=1, device="cpu")
    formatted = dict(data, dataset_mode="Formatted dataset", formatted_file="data.txt")
    pairs = [(a.format(outside=outside), b.format(outside=outside)) for a, b in ESCAPES]
    kinds = {
        "dataset": lambda n: refusal(url, "start_training", *start_values(url, **dict(data, raw_file=n))),
        "format file": lambda n: refusal(
            url, "start_training", *start_values(url, **dict(formatted, format_file=n))
        ),
        "model": lambda n: refusal(url, "load_model", f"models/{n}", "cpu", "fp32"),
        "model, bare": lambda n: refusal(url, "load_model", n, "cpu", "fp32"),
        "LoRA": lambda n: refusal(url, "apply_loras", [f"loras/{n}"]),
        "run LoRA": lambda n: refusal(url, "apply_loras", [f"runs/{n}"]),
        "run name": lambda n: refusal(url, "start_training", *start_values(url, **dict(data, run_name=n))),
    }
    for kind, refuse in kinds.items():
        kind_pairs = pairs + ([("secret.txt", "gone.txt")] if "dataset" in kind else [])
        for existing, missing in kind_pairs:
            if kind == "model, bare" and HUB_ID.match(existing):
                continue  # taken as a hub id: test_a_hub_shaped_model_name_reads_the_same_... below
            same_reading(refuse(existing), existing, refuse(missing), missing, outside)
    assert served.demo.workspace.model_name == "models/tiny" and served.demo.workspace.loras == {}
    assert jobs.running_jobs(attacked) == []
    assert sorted(p.name for p in (attacked / "runs").iterdir()) == runs_before


def test_a_hub_shaped_model_name_reads_the_same_whether_or_not_a_local_path_exists(
    served, attacked, monkeypatch
):
    """A model name shaped like a hub id (owner/name) that is also a path from the UI's working folder: the
    answer must not tell whether that path exists."""
    monkeypatch.chdir(attacked.parent)  # the UI's working folder: `outside/secret.txt` exists from here
    existing, missing = "outside/secret.txt", "outside/missing.txt"
    same_reading(
        refusal(served.url, "load_model", existing, "cpu", "fp32"),
        existing,
        refusal(served.url, "load_model", missing, "cpu", "fp32"),
        missing,
        attacked.parent / "outside",
    )


def test_an_upload_named_as_a_link_replaces_the_link_and_never_writes_through_it(connect, attacked, tmp_path):
    """An uploaded file whose name is a symlink in datasets/ pointing out: the file outside keeps its bytes;
    the upload lands in datasets/ as a plain file."""
    from gradio_client import handle_file

    outside = attacked.parent / "outside" / "victim.txt"
    outside.write_text(SECRET)
    link = attacked / "datasets" / "victim.txt"
    os.symlink(outside, link)
    upload = tmp_path / "victim.txt"
    upload.write_text("uploaded notes")
    try:
        connect().predict(handle_file(str(upload)), api_name="/add_dataset")
        assert outside.read_text() == SECRET
        assert not link.is_symlink() and link.read_text() == "uploaded notes"
    finally:
        link.unlink(missing_ok=True)


def test_the_file_route_serves_nothing_outside_its_folders(served, attacked):
    """/gradio_api/file= (and the old /file=) refuses the project's own files, files outside and every
    traversal spelling, with an answer that does not depend on whether the file exists; an upload it made
    itself is served (the route works) and an upload cannot choose where it lands."""
    outside = attacked.parent / "outside"
    upload = httpx.post(
        served.url + "/gradio_api/upload", files={"files": ("../../escaped.txt", b"uploaded bytes")}
    )
    assert upload.status_code == 200, upload.text
    (uploaded,) = upload.json()
    assert httpx.get(f"{served.url}/gradio_api/file={uploaded}").text == "uploaded bytes"
    cache = Path(uploaded).parent.parent
    assert Path(uploaded).name == "escaped.txt" and not (cache.parent / "escaped.txt").exists()

    pairs = [
        (f"{outside}/secret.txt", f"{outside}/missing.txt"),
        (f"{attacked}/datasets/secret.txt", f"{attacked}/datasets/gone.txt"),  # links out of datasets/
        (f"{attacked}/datasets/data.txt", f"{attacked}/datasets/no-data.txt"),  # inside, but not served
        ("/etc/passwd", "/etc/no-such-file"),
        (f"{cache}/../../../../etc/passwd", f"{cache}/../../../../etc/no-such-file"),
        (f"{cache}/..%2F..%2F..%2F..%2Fetc%2Fpasswd", f"{cache}/..%2F..%2F..%2F..%2Fetc%2Fno-such-file"),
        ("%2Fetc%2Fpasswd", "%2Fetc%2Fno-such-file"),
        ("/etc/passwd%00.txt", "/etc/no-such-file%00.txt"),
        ("/proc/self/environ", "/proc/self/no-such-file"),
    ]
    for route in ("/gradio_api/file=", "/file=", "/gradio_api/file/", "/static/", "/assets/"):
        for existing, missing in pairs:
            answers = [raw_get(served.url, route + name) for name in (existing, missing)]
            for status, body in answers:
                assert status in (403, 404), (route, existing, status)
                assert SECRET not in body and "root:" not in body
            assert answers[0][0] == answers[1][0], (route, existing)
            readings = [re.sub(r"not allowed: .*\.\"", 'not allowed: NAME."', body) for _, body in answers]
            assert readings[0] == readings[1], (route, readings)


def raw_get(url: str, path: str) -> tuple[int, str]:
    """GET `path` sent exactly as written (an HTTP library would fold `../` away first): status, body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b"".join(iter(lambda: connection.recv(65536), b"")).decode("utf-8", "replace")
    head, _, body = answer.partition("\r\n\r\n")
    return int(head.split()[1]), body


def test_a_server_file_named_as_an_upload_is_refused(served, attacked):
    """A request may name a file on the server as if it had uploaded it (gradio's FileData) to the Add a
    data file button: refused, and the file is copied neither into datasets/ nor into gradio's cache."""
    from gradio.utils import get_upload_folder

    stolen = attacked.parent / "outside" / "stolen-key.txt"
    stolen.write_text(f"stolen key bytes {uuid.uuid4()}")  # unique: gradio's cache outlives test runs
    sent = httpx.post(
        served.url + "/gradio_api/call/add_dataset",
        json={"data": [{"path": str(stolen), "meta": {"_type": "gradio.FileData"}}]},
    )
    if sent.status_code == 200:
        event = sent.json()["event_id"]
        httpx.get(f"{served.url}/gradio_api/call/add_dataset/{event}", timeout=60)  # wait for its outcome
    copies = [
        path
        for folder in (attacked / "datasets", Path(get_upload_folder()))
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink() and path.read_bytes() == stolen.read_bytes()
    ]
    assert copies == []


def test_a_foreign_origin_cannot_load_apply_train_or_interrupt(served, attacked, connect):
    """From another site's page (Origin evil.example or null) loading a model, applying a LoRA, starting and
    interrupting training are refused with 403 before any handler runs, and change nothing; the very same
    calls from the UI's own page do load, apply and train."""
    from gradio_client.exceptions import AppError

    workspace = served.demo.workspace
    page, evil, sandboxed = connect(), connect(Origin=EVIL), connect(Origin="null")
    train = dict(
        run_name="wanted",
        dataset_mode="Raw text file",
        raw_file="data.txt",
        rank=4,
        alpha=8,
        batch_size=4,
        micro_batch_size="2",
        max_steps=2,
        cutoff_len=32,
        save_steps=1,
        precision="fp32",
        device="cpu",
    )

    def forbidden(api, endpoint: str, *args, **kwargs) -> None:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            api.predict(*args, api_name=endpoint, **kwargs)
        assert refused.value.response.status_code == 403, endpoint

    for attacker in (evil, sandboxed):
        forbidden(attacker, "/load_model", "models/tiny", "cpu", "fp32")
    assert workspace.model_name is None
    page.predict("models/tiny", "cpu", "fp32", api_name="/load_model")
    assert workspace.model_name == "models/tiny"
    for attacker in (evil, sandboxed):
        forbidden(attacker, "/apply_loras", ["loras/tiny-lora"])
        forbidden(attacker, "/start_training", *start_values(served.url, **train))
    raw = httpx.post(
        served.url + "/gradio_api/call/start_training",
        headers={"Origin": EVIL},
        json={"data": start_values(served.url, **train)},
    )
    assert raw.status_code == 403
    assert workspace.loras == {} and jobs.running_jobs(attacked) == []
    assert not (attacked / "runs" / "wanted").exists()

    page.predict(["loras/tiny-lora"], api_name="/apply_loras")
    assert list(workspace.loras.values()) == ["loras/tiny-lora"]
    page.predict(api_name="/remove_loras")
    page.predict(*start_values(served.url, **train), api_name="/start_training")
    run_dir = attacked / "runs" / "wanted"
    assert jobs.status(run_dir).running  # the child is still importing torch: seconds, not milliseconds
    forbidden(evil, "/interrupt_training")
    assert jobs.status(run_dir).running
    with pytest.raises(AppError, match="already running"):  # Start twice through the page: refused
        page.predict(*start_values(served.url, **dict(train, run_name="again")), api_name="/start_training")
    assert not (attacked / "runs" / "again").exists()
    final = jobs.wait(run_dir, timeout=240)
    assert final.state == "finished", final.log_tail
