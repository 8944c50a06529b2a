"""The UI at the HTTP level: paths outside the project, foreign Host/Origin and open addresses are refused."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from tuneforge import jobs
from tuneforge.errors import ConfigError
from tuneforge.ui.project import Project
from tuneforge.ui.security import check_bind

ESCAPES = [
    "../../etc/passwd",
    "/etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "..\\..\\etc\\passwd",
    "data.txt\x00.json",
    "out-link",
    "out-link/passwd",
    "secret.txt",
    "../secret.txt",
]


@pytest.fixture()
def escape_project(project):
    """A project with a secret beside it and a symlink from each folder to the outside."""
    (project.parent / "secret.txt").write_text("do not read")
    for folder in ("datasets", "models", "loras", "runs"):
        (project / folder).mkdir(exist_ok=True)
        os.symlink(project.parent, project / folder / "out-link")
    os.symlink(project.parent / "secret.txt", project / "datasets" / "secret.txt")
    return project


def client(ui):
    from gradio_client import Client

    return Client(ui.url, verbose=False)


def call(api, endpoint: str, **values):
    """Call an endpoint with some parameters set; the rest keep the form's defaults (None where it has none)."""
    info = api.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]["parameters"]
    for parameter in info:
        if not parameter["parameter_has_default"]:
            values.setdefault(parameter["parameter_name"], None)
    return api.predict(api_name=endpoint, **values)


@pytest.mark.parametrize("name", ESCAPES)
def test_ui_refuses_paths_outside_the_project_folders(escape_project, name):
    project = Project(escape_project)
    choices = {
        "dataset": project.dataset,
        "format file": project.format_file,
        "LoRA": lambda n: project.lora(f"loras/{n}"),
        "run LoRA": lambda n: project.lora(f"runs/{n}"),
        "run name": lambda n: project.run_dir(n, must_exist=False),
        "run": project.run_dir,
    }
    try:
        as_hub_id = project.model(name)  # owner/name-shaped: only ever a hub id, never a local path
        assert as_hub_id == f"hub:{name}"
    except ConfigError as refused:
        assert "do not read" not in str(refused) and "exist" not in str(refused)
    if name == "secret.txt":  # links out only from datasets/; elsewhere it is a fine new run name
        choices = {"dataset": project.dataset}
    for what, choose in choices.items():
        with pytest.raises(ConfigError) as refused:
            choose(name)
        assert "do not read" not in str(refused.value), what
        assert "exist" not in str(refused.value), what  # never says whether the outside target exists


def test_links_out_are_not_listed(escape_project):
    project = Project(escape_project)
    assert project.datasets() == ["data.txt"]
    assert project.models() == ["default", "models/tiny"]
    assert project.loras() == []


def test_every_escape_is_refused_over_http_and_starts_nothing(escape_project, ui):
    from gradio_client.exceptions import AppError

    api = client(ui)
    api.predict("models/tiny", "cpu", "fp32", api_name="/load_model")
    attempts = {
        "raw_file": ("Raw text file", "param_2"),
        "formatted_file": ("Formatted dataset", "param_3"),
        "format_file": ("Formatted dataset", "param_4"),
        "other_file": ("Other data", "param_5"),
        "validation_file": ("Raw text file", "param_7"),
        "run_name": ("Raw text file", "param_0"),
        "copy_from": ("Raw text file", "param_8"),  # with Train its LoRA further (param_9) ticked
    }
    for name in [
        "../../etc/passwd",
        "/etc/passwd",
        "..%2F..%2Fsecret.txt",
        "..\\secret.txt",
        "a\x00b",
        "out-link/secret.txt",
        "secret.txt",
    ]:
        for what, (mode, parameter) in attempts.items():
            if what == "run_name" and name == "secret.txt":
                continue  # a fine new run name: only datasets/ links it out
            values = {
                "param_1": mode,
                "param_2": "data.txt",
                "param_3": "data.txt",
                "param_5": "data.txt",
                parameter: name,
                "param_9": parameter == "param_8",
            }
            with pytest.raises(AppError) as refused:
                call(api, "/start_training", **values)
            assert "do not read" not in str(refused.value), (what, name)
        with pytest.raises(AppError):
            api.predict(name, "cpu", "fp32", api_name="/load_model")
        with pytest.raises(AppError):
            api.predict([f"loras/{name}"], api_name="/apply_loras")
        with pytest.raises(AppError):
            api.predict(["base"], [name], 64, 0, api_name="/perplexity")
    assert jobs.running_jobs(escape_project) == []
    assert sorted(p.name for p in (escape_project / "runs").iterdir()) == ["out-link"]


START = "/gradio_api/queue/join"


def _start_request(ui, headers: dict) -> httpx.Response:
    return httpx.post(
        ui.url + START,
        headers=headers,
        timeout=10,
        json={"data": [], "fn_index": 0, "trigger_id": 0, "session_hash": "x"},
    )


def test_foreign_origin_and_host_cannot_start_training(ui, project):
    port = ui.url.rsplit(":", 1)[1]
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://evil.example:{port}"},
        {"Host": f"evil.example:{port}"},
        {"Host": "evil.example", "Origin": "http://evil.example"},
    ):
        response = _start_request(ui, headers)
        assert response.status_code == 403, headers
    assert httpx.get(ui.url + "/", headers={"Host": "rebound.example"}).status_code == 403
    same_site = _start_request(ui, {"Origin": ui.url})
    assert same_site.status_code != 403  # the guard lets the page's own requests through
    time.sleep(0.5)
    assert not any((project / "runs").iterdir())


def test_another_address_without_auth_refuses_to_start(project):
    from tuneforge.ui import launch, serve

    with pytest.raises(ConfigError, match="--auth"):
        launch(host="0.0.0.0", project_dir=project)
    with pytest.raises(ConfigError, match="--auth"):
        serve(host="192.168.1.20", project_dir=project)
    with pytest.raises(ConfigError, match="user:password"):
        serve(host="0.0.0.0", auth="nopassword", project_dir=project)
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "alice:s3cret")


def test_login_is_required_when_auth_is_set(project):
    from tuneforge.ui import serve

    from .conftest import free_port

    running = serve(port=free_port(), auth="alice:s3cret", project_dir=project)
    try:
        api = httpx.post(
            running.url + "/gradio_api/call/load_model", json={"data": ["default", "cpu", "fp32"]}
        )
        assert api.status_code in (401, 403)
        login = httpx.post(running.url + "/login", data={"username": "alice", "password": "wrong"})
        assert login.status_code >= 400
    finally:
        running.close()


def test_resume_until_a_step_the_run_has_passed_is_refused_not_finished(project):
    """Resume until step 2 of a run saved at step 4 ended it at once ("step 4/2", finished): its 20 steps lost."""
    from gradio_client.exceptions import AppError

    from tuneforge.ui import serve

    from .conftest import free_port

    run = project / "runs" / "long"
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    (run / "checkpoints" / "step-4" / "trainer_state.json").write_text("{}")
    (run / "config.yaml").write_text("max_steps: 20\n")
    ui = serve(port=free_port(), project_dir=project)  # after the run exists: the page lists it
    try:
        with pytest.raises(AppError) as refused:
            client(ui).predict(2, "long", api_name="/resume_training")  # the shown run is state: copied
    finally:
        ui.close()
    assert "'long' is saved at step 4 already; give a later step" in str(refused.value)
    assert (run / "config.yaml").read_text() == "max_steps: 20\n" and not (run / "train.log").exists()


@pytest.fixture()
def bad_data_ui(project):
    """The UI over a project whose datasets/ also holds an empty file, a one-token file and records."""
    from tuneforge.ui import serve

    from .conftest import free_port

    (project / "datasets" / "empty.txt").write_text("")
    (project / "datasets" / "one-token.txt").write_text("To")
    (project / "datasets" / "notes.json").write_text('[{"instruction": "a", "output": "b"}]')
    running = serve(port=free_port(), project_dir=project)  # the lists are filled as the page opens
    yield running
    running.close()


def test_data_that_cannot_train_is_refused_before_a_run_folder_and_the_preview_says_why(bad_data_ui, project):
    """Start made runs/bad for an empty file (Preview refused it), so the name was taken by a failed run; a
    refused preview left the previous file's preview on the page under a passing toast."""
    from gradio_client.exceptions import AppError

    api = client(bad_data_ui)
    api.predict("models/tiny", "cpu", "fp32", api_name="/load_model")
    form = {"param_1": "Raw text file", "param_2": "empty.txt"}
    with pytest.raises(AppError, match="is empty"):
        call(api, "/start_training", param_0="bad", **form)
    assert not (project / "runs" / "bad").exists()
    assert call(api, "/preview_data", **form).startswith("**Cannot preview this data:** data file")


def test_an_empty_upload_is_refused_and_a_perplexity_with_a_bad_file_records_nothing(bad_data_ui, project):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    api = client(bad_data_ui)
    (project.parent / "blank.txt").write_text("\n \n")
    with pytest.raises(AppError, match="blank.txt is empty"):
        api.predict(handle_file(str(project.parent / "blank.txt")), api_name="/add_dataset")
    assert not (project / "datasets" / "blank.txt").exists()
    api.predict("models/tiny", "cpu", "fp32", api_name="/load_model")
    with pytest.raises(AppError, match="fewer than 2 tokens"):
        api.predict(["base"], ["data.txt", "one-token.txt"], 64, 0, api_name="/perplexity")
    assert not (project / "perplexity-history.jsonl").exists()  # data.txt's result was not kept alone
    assert Project(project).text_datasets() == ["data.txt", "empty.txt", "one-token.txt"]  # no records


def test_resume_continues_the_run_picked_when_the_page_shows_a_finished_one(project):
    from tuneforge.ui.training_tab import run_to_resume

    for name in ("stopped", "finished"):
        (project / "runs" / name).mkdir(parents=True)
    (project / "runs" / "finished" / "report.md").write_text("# done\n")
    runs = Project(project)
    assert run_to_resume(runs, "finished", "stopped") == "stopped"  # the newest run is shown, and finished
    assert run_to_resume(runs, "stopped", "finished") == "stopped"  # the shown run can still go on
    assert run_to_resume(runs, "", "stopped") == "stopped" and run_to_resume(runs, "stopped", "") == "stopped"
