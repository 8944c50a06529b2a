"""The same run scales out: 2 CPU processes under torchrun (DDP, gloo) train what 1 process trains.

    python -m pytest tests/unit/train/test_distributed.py -q

Every run here is a real launch of `python -m tuneforge train CONFIG.yaml`, the way a user starts one. The
1-process reference is `accelerate launch --cpu --num_processes 2`, which (measured) starts a single process on
a machine without GPUs: so it is also the run that must say it got fewer processes than it asked for.
TUNEFORGE_RECORD_EXAMPLES makes every rank write the example indices of each step it trained on.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
STEPS = 9  # 24 examples, batch 8: three epochs of three steps
LAUNCH_TIMEOUT = 300  # seconds; most of a launch is importing torch/transformers on two busy cores

needs_launchers = pytest.mark.skipif(
    shutil.which("torchrun", path=str(BIN)) is None or shutil.which("accelerate", path=str(BIN)) is None,
    reason="torchrun/accelerate launchers not installed",
)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def steps_seen(record_dir: Path) -> dict[int, dict[int, list[int]]]:
    """{rank: {step: example indices}} from the TUNEFORGE_RECORD_EXAMPLES files."""
    seen: dict[int, dict[int, list[int]]] = {}
    for path in record_dir.glob("examples-rank*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            seen.setdefault(record["rank"], {})[record["step"]] = record["examples"]
    return seen


def torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "tuneforge", "train", *args]


def launch(command: list[str], cwd: Path, record_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNEFORGE_RECORD_EXAMPLES": str(record_dir), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, tiny_model_dir) -> Path:
    from tuneforge.data.spintax import expand

    folder = tmp_path_factory.mktemp("scale")
    data = folder / "lines.txt"
    data.write_text(
        "\n".join(
            expand(
                "{you can|anyone can} {make|build} a {small|tasty} {cheese|ham} sandwich "
                "{quickly|slowly|today}",
                24,
                seed=1,
            )
        )
        + "\n"
    )
    config = folder / "run.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\ndata: {data}\nmax_steps: {STEPS}\nbatch_size: 8\n"
        "micro_batch_size: 2\nprecision: fp32\nrank: 4\nalpha: 8\nlearning_rate: 0.03\n"
        "target_modules: all-linear\nlora_dropout: 0\nsave_steps: 2\nnum_threads: 1\n"
        "logging_steps: 1\nrecipe: textgen\n"  # fixed settings: every example trains, none held out
    )
    return config


@pytest.fixture(scope="module")
def two_processes(config_file) -> dict:
    """The 2-process run, started without output_dir in an empty folder: where it writes is all it writes."""
    work = config_file.parent / "ddp-work"
    work.mkdir()
    done = launch(torchrun(str(config_file)), work, work.parent / "ddp-seen")
    return {
        "work": work,
        "runs": sorted((work / "runs").iterdir()),
        "seen": steps_seen(work.parent / "ddp-seen"),
        "output": done.stdout + done.stderr,
    }


@pytest.fixture(scope="module")
def one_process(config_file) -> dict:
    command = [
        str(BIN / "accelerate"),
        "launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "tuneforge",
        "train",
        str(config_file),
        "--output_dir",
        str(config_file.parent / "single"),
    ]
    done = launch(command, config_file.parent, config_file.parent / "single-seen")
    return {
        "run": config_file.parent / "single",
        "seen": steps_seen(config_file.parent / "single-seen"),
        "output": done.stdout + done.stderr,
    }


@needs_launchers
def test_two_process_ddp_run_matches_the_single_process_run(two_processes, one_process):
    ddp, single = two_processes["runs"][0], one_process["run"]
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-5)
    assert (ddp / "adapter" / "adapter_model.safetensors").is_file()
    assert (ddp / "checkpoints" / f"step-{STEPS}" / "trainer_state.json").is_file()
    assert max_difference(adapter(ddp / "adapter"), adapter(single / "adapter")) <= 1e-4
    assert "world size: 2 processes (torchrun, engine MULTI_CPU)" in (ddp / "report.md").read_text()
    assert "batch 8 = micro batch 2 x accumulation 2 x 2 processes" in (ddp / "report.md").read_text()


@needs_launchers
def test_each_rank_trains_on_its_own_half_of_every_step(two_processes, one_process):
    ranks, single = two_processes["seen"], one_process["seen"][0]
    assert sorted(ranks) == [0, 1] and sorted(ranks[0]) == sorted(ranks[1]) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        first, second = ranks[0][step], ranks[1][step]
        assert len(first) == len(second) == 4 and not set(first) & set(second), step
        assert sorted(first + second) == sorted(single[step]), step  # together: the one process's step


@needs_launchers
def test_only_rank_zero_writes_one_run_folder_log_and_checkpoint_set(two_processes):
    assert len(two_processes["runs"]) == 1, two_processes["runs"]  # the ranks agree on one timestamped folder
    run = two_processes["runs"][0]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, STEPS + 1)
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        f"step-{s}" for s in (2, 4, 6, 8, STEPS)
    )
    assert sorted(p.name for p in run.iterdir()) == [
        "adapter",
        "checkpoints",
        "config.yaml",
        "loss_curve.png",
        "metrics.jsonl",
        "report.md",
    ]
    assert sorted(p.name for p in two_processes["work"].iterdir()) == ["runs"]
    assert two_processes["output"].count("done: ") == 1  # rank 1 trains silently
    from tuneforge.config import load_config
    from tuneforge.train.launch import launch_in_config

    assert launch_in_config(run / "config.yaml").world_size == 2
    assert load_config(run / "config.yaml").max_steps == STEPS  # the launch note leaves a loadable config


@needs_launchers
def test_a_run_asked_for_two_processes_that_gets_one_says_so(one_process):
    assert "asked for 2 processes but 1 came up" in one_process["output"]
    assert "asked for 2 processes but 1 came up" in (one_process["run"] / "report.md").read_text()
    assert (
        "batch 8 = micro batch 2 x accumulation 4 x 1 process"
        in (one_process["run"] / "report.md").read_text()
    )
    from tuneforge.train.launch import launch_in_config

    recorded = launch_in_config(one_process["run"] / "config.yaml")
    assert (recorded.world_size, recorded.asked, recorded.launcher) == (1, 2, "accelerate launch")


@needs_launchers
def test_kill_minus_nine_then_resume_with_two_processes_ends_as_the_uninterrupted_run(
    config_file, two_processes
):
    from tuneforge.train.checkpoint import list_checkpoints

    run = config_file.parent / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with (config_file.parent / "killed.log").open("w") as log:
        launcher = subprocess.Popen(
            torchrun(str(config_file), "--output_dir", str(run)),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not list_checkpoints(run) and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its workers, as a lost machine would
        launcher.wait()
    assert list_checkpoints(run) and not (run / "adapter").exists(), "the run ended before it could be killed"
    launch(
        torchrun(str(config_file), "--output_dir", str(run), "--resume_from", "latest"),
        config_file.parent,
        config_file.parent / "resumed-seen",
    )
    uninterrupted = two_processes["runs"][0]
    final, expected = (
        json.loads((r / "checkpoints" / f"step-{STEPS}" / "trainer_state.json").read_text())
        for r in (run, uninterrupted)
    )
    assert final["step"] == STEPS
    assert final["losses"] == pytest.approx(expected["losses"], rel=1e-4)
    assert max_difference(adapter(run / "adapter"), adapter(uninterrupted / "adapter")) <= 1e-4


@needs_launchers
def test_nproc_flag_starts_torchrun_and_matches_the_single_process_run(config_file, one_process):
    run = config_file.parent / "nproc"
    command = [str(BIN / "tuneforge"), "train", str(config_file), "--nproc", "2", "--output_dir", str(run)]
    done = launch(command, config_file.parent, config_file.parent / "nproc-seen")
    assert "starting 2 processes" in done.stdout
    assert "world size: 2 processes (torchrun" in (run / "report.md").read_text()
    assert losses(run) == pytest.approx(losses(one_process["run"]), rel=1e-5)
    assert sorted(steps_seen(config_file.parent / "nproc-seen")) == [0, 1]
