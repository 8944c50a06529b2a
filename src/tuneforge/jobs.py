"""Training jobs as their own processes: start, watch, interrupt, resume, and find again after a restart.

    from tuneforge import jobs
    from tuneforge.config import RunConfig
    job = jobs.start(RunConfig(data="datasets/data.txt", max_steps=50, save_steps=10), "runs/my-lora")
    print(jobs.status("runs/my-lora").describe())    # running: step 12/50, loss 2.31, ...
    jobs.stop("runs/my-lora")                          # SIGINT: the trainer checkpoints and exits 0
    jobs.resume("runs/my-lora")                        # continues from the newest checkpoint

A job is `tuneforge train <run>/config.yaml` in its own session (closing a UI or its terminal leaves it
running), writing to `<run>/train.log` (a file, never a pipe nobody reads) and `<run>/metrics.jsonl`;
`<run>/job.json` records its pid, command and start time so any later process re-attaches. One job runs
at a time per runs folder: the child holds an flock on `<runs>/.job.lock` for its whole life, so a crashed
job never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, from_dict
from tuneforge.errors import TuneforgeError
from tuneforge.train.checkpoint import list_checkpoints, refuse_earlier_run

JOB_FILE = "job.json"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".job.lock"
START_MARK = "--- tuneforge job started "  # each start or resume appends one section to the log
STATES = ("not started", "running", "finished", "interrupted", "failed")
_PROGRESS = re.compile(r"^step (\d+)/(\d+)\s.*?(?:eta (\S+))?$")
_RESUMED = re.compile(r"resumed from .* at step (\d+)/(\d+)")
_children: dict[int, subprocess.Popen] = {}  # jobs this process started, reaped by a waiter thread


class JobError(TuneforgeError):
    """A training job cannot be started, stopped or resumed as asked."""


@dataclass
class JobStatus:
    """What a run folder's job is doing, read from its files and its process."""

    run_dir: Path
    state: str  # one of STATES
    message: str  # one sentence for people
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    validation_loss: float | None = None
    tokens_per_second: float | None = None
    epoch: float | None = None
    eta: str | None = None
    pid: int | None = None
    checkpoints: int = 0
    metrics: list[dict] = field(default_factory=list)
    log_tail: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"

    def describe(self) -> str:
        """One line: state, step/total, loss, speed, ETA."""
        return ", ".join([self.state, *self.progress()]) + f" — {self.message}"

    def progress(self) -> list[str]:
        """The run's numbers as short phrases (step/total, loss, validation loss, speed, ETA); empty before step 1."""
        if not self.step:
            return []
        parts = [f"step {self.step}/{self.total_steps}" if self.total_steps else f"step {self.step}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.validation_loss is not None:
            parts.append(f"validation loss {self.validation_loss:.4f}")
        if self.tokens_per_second:
            parts.append(f"{self.tokens_per_second:,.0f} tokens/s")
        if self.running and self.eta:
            parts.append(f"ETA {self.eta}")
        return parts


# ---------------------------------------------------------------------- starting
def train_command(config_path: Path, resume: bool = False) -> list[str]:
    """The child's command line: `python -m tuneforge train CONFIG [--resume_from latest]`."""
    module = "tuneforge" if importlib.util.find_spec("tuneforge.__main__") else "tuneforge.cli"
    return [sys.executable, "-m", module, "train", str(config_path)] + (
        ["--resume_from", "latest"] if resume else []
    )


def start(
    config: RunConfig | dict[str, Any], run_dir: str | Path, *, cwd: str | Path | None = None
) -> JobStatus:
    """Write `<run_dir>/config.yaml` (output_dir = run_dir) and start training it in a new process.

    Only the keys given are written (a dict's keys; a RunConfig's given keys and values other than the
    defaults), so the run chooses the rest as `tuneforge train` does (recipe auto: a RunConfig of defaults
    trains with the values chosen from its data) and then saves its whole config there. Raises JobError when
    another job of the same runs folder is still running. Relative data paths in `config` are read from `cwd`
    (default: the folder that holds the runs folder, i.e. the project).
    """
    run_dir = Path(run_dir).resolve()
    values = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    if isinstance(config, RunConfig):  # its given keys, and any value set since or chosen for it
        defaults = RunConfig().to_dict()
        given = set(config.given_keys) | {key for key, value in values.items() if value != defaults[key]}
    else:
        given = set(config)
    given.add("output_dir")
    values.update(output_dir=str(run_dir), resume_from=None)
    run_config = from_dict(values)  # a bad value fails here, in the caller, not in the child's log
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = _take_lock(run_dir)  # before writing: a refused Start must not touch the running job's files
    try:
        refuse_earlier_run(run_dir)  # before config.yaml is written over a finished run's
        run_dir.mkdir(exist_ok=True)
        config_path = run_dir / "config.yaml"
        run_config.save(config_path, keys=given - {"resume_from"})
    except BaseException:
        os.close(lock_fd)
        raise
    return _launch(run_dir, train_command(config_path), cwd, lock_fd)


def resume(
    run_dir: str | Path, overrides: dict[str, Any] | None = None, *, cwd: str | Path | None = None
) -> JobStatus:
    """Continue an interrupted (or failed) run from its newest checkpoint; with none yet, start it over.

    `overrides` change settings that a checkpoint does not pin (e.g. max_steps, epochs, learning_rate).
    """
    run_dir = Path(run_dir).resolve()
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise JobError(f"'{run_dir.name}' has no config.yaml, so there is nothing to resume; start a new run")
    current = status(run_dir)
    if current.running:
        raise JobError(f"'{run_dir.name}' is still running; interrupt it before resuming")
    if current.state == "finished":
        raise JobError(
            f"'{run_dir.name}' already finished; start a new run (copy its parameters) to train more"
        )
    saved = list_checkpoints(run_dir)
    at = int(saved[-1].name.removeprefix("step-")) if saved else 0
    until = (overrides or {}).get("max_steps")
    if until is not None and int(until) <= at:  # the run would end at once, its remaining steps lost
        raise JobError(
            f"'{run_dir.name}' is saved at step {at} already; give a later step than {until} as its max steps, "
            "or none for the run's own end"
        )
    command = train_command(config_path, resume=current.checkpoints > 0)
    for key, value in (overrides or {}).items():
        command += [f"--{key}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return _launch(run_dir, command, cwd, _take_lock(run_dir))


def _launch(run_dir: Path, command: list[str], cwd: str | Path | None, lock_fd: int) -> JobStatus:
    """Start `command` as the job of `run_dir`; it inherits the lock `lock_fd` (taken by the caller)."""
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log shows each step as it happens
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        started = time.time()
        with (run_dir / LOG_FILE).open("a") as log:
            log.write(f"{START_MARK}{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n")
            log.flush()
            # Own session: Ctrl-C in the UI's terminal, or the UI exiting, does not reach the job.
            process = subprocess.Popen(
                command,
                cwd=str(cwd or run_dir.parent.parent),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(lock_fd,),
            )
        _write_job(
            run_dir,
            {
                "pid": process.pid,
                "started": started,
                "command": command,
                "process_start": _process_start(process.pid),
            },
        )
        os.write(lock_fd, f"{run_dir}\n".encode())
    finally:
        os.close(lock_fd)  # the child keeps the lock for as long as it lives
    _children[process.pid] = process
    threading.Thread(target=_reap, args=(process, run_dir), daemon=True).start()
    return status(run_dir)


def _take_lock(run_dir: Path) -> int:
    """An flock on the runs folder's lock file; JobError naming the running job when it is taken."""
    fd = os.open(run_dir.parent / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        other = running_jobs(run_dir.parent.parent, runs_folder=run_dir.parent)
        name = other[0].name if other else "another run"
        raise JobError(
            f"a training job is already running ({name}); wait for it or interrupt it first"
        ) from None
    os.ftruncate(fd, 0)
    return fd


def _reap(process: subprocess.Popen, run_dir: Path) -> None:
    """Wait for a child this process started (so it leaves no zombie) and record its exit code."""
    try:
        code = process.wait()
        job = read_job(run_dir)
        if job.get("pid") == process.pid:
            _write_job(run_dir, {**job, "exit_code": code, "ended": time.time()})
    finally:
        _children.pop(process.pid, None)


# ---------------------------------------------------------------------- watching
def read_job(run_dir: str | Path) -> dict:
    path = Path(run_dir) / JOB_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_job(run_dir: Path, job: dict) -> None:
    tmp = run_dir / f".{JOB_FILE}.tmp-{os.getpid()}-{threading.get_ident()}"
    tmp.write_text(json.dumps(job, indent=2))
    os.replace(tmp, run_dir / JOB_FILE)  # a reader never sees half a file


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The run's metrics.jsonl records (a half-written last line is skipped)."""
    records = []
    with contextlib.suppress(OSError):
        for line in (Path(run_dir) / METRICS_FILE).read_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so a reused pid is not taken for the job."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def is_alive(job: dict) -> bool:
    """True while the job's process runs (a zombie or a reused pid does not count)."""
    pid = job.get("pid")
    if not pid or "exit_code" in job:
        return False
    if pid in _children:  # ours: running until the reaper has written its exit code (then it is popped)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] in ("Z", "X"):
                return False
            if job.get("process_start") and fields[19] != job["process_start"]:
                return False
    return True


def _last_section(log: str) -> str:
    index = log.rfind(START_MARK)
    return _as_a_terminal_shows(log[index:] if index >= 0 else log)


def _as_a_terminal_shows(text: str) -> str:
    """Progress bars (transformers' "Loading weights") redraw their line after carriage returns, which
    splitlines would count as lines: keep what a terminal leaves of each line, its last drawing."""
    return "\n".join(
        next((drawn for drawn in reversed(line.split("\r")) if drawn.strip()), "")
        for line in text.split("\n")
    )


def status(run_dir: str | Path) -> JobStatus:
    """The job's state (running / finished / interrupted / failed / not started) and its latest numbers."""
    run_dir = Path(run_dir)
    job = read_job(run_dir)
    try:
        with (run_dir / LOG_FILE).open(errors="replace", newline="") as file:  # keep the bars' \r
            log = file.read().replace("\r\n", "\n")
    except OSError:
        log = ""
    section = _last_section(log)
    metrics = read_metrics(run_dir)
    checkpoints = _count_checkpoints(run_dir)
    result = JobStatus(
        run_dir,
        "not started",
        "no job has run in this folder yet",
        pid=job.get("pid"),
        metrics=metrics,
        checkpoints=checkpoints,
        log_tail="\n".join(section.splitlines()[-15:]),
    )
    if metrics:
        last = metrics[-1]
        result.step, result.loss, result.epoch = last.get("step", 0), last.get("loss"), last.get("epoch")
        result.tokens_per_second = last.get("tokens_per_second")
        validation = [m["validation_loss"] for m in metrics if "validation_loss" in m]
        result.validation_loss = validation[-1] if validation else None
    for line in section.splitlines():
        if match := _PROGRESS.match(line.strip()):
            result.total_steps, result.eta = int(match.group(2)), match.group(3)
        elif match := _RESUMED.search(line):
            result.total_steps = int(match.group(2))
    if not job:
        if (run_dir / "report.md").is_file():
            result.state, result.message = "finished", "trained outside the UI; its report is in report.md"
        return result
    result.state, result.message = _state(job, section, checkpoints)
    return result


def _state(job: dict, section: str, checkpoints: int) -> tuple[str, str]:
    if is_alive(job):
        return "running", f"training in process {job['pid']}"
    error = next(
        (line for line in reversed(section.splitlines()) if line.startswith("tuneforge: error:")), None
    )
    if "\ninterrupted at step" in section or "tuneforge: interrupted" in section:
        return "interrupted", (
            "interrupted; a checkpoint is saved, Resume continues from it"
            if checkpoints
            else "interrupted before the first step; Resume starts it again"
        )
    if "\ndone: " in section and job.get("exit_code", 0) == 0:
        return "finished", next(line for line in section.splitlines() if line.startswith("done: "))
    if error:
        return "failed", error.removeprefix("tuneforge: error: ")
    if "Traceback (most recent call last)" in section:
        last = [line for line in section.splitlines() if line.strip()][-1]
        return "failed", f"the training process crashed: {last.strip()}"
    if checkpoints:  # killed (e.g. SIGKILL, a reboot): the checkpoints are still good
        return (
            "interrupted",
            "the training process ended without finishing; Resume continues from its last checkpoint",
        )
    return (
        "failed",
        f"the training process ended without a result (exit code {job.get('exit_code', 'unknown')})",
    )


def _count_checkpoints(run_dir: Path) -> int:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return 0
    return sum(
        1 for p in folder.iterdir() if p.name.startswith("step-") and (p / "trainer_state.json").is_file()
    )


# ---------------------------------------------------------------------- stopping, finding
def stop(run_dir: str | Path, wait: float = 0.0) -> JobStatus:
    """Interrupt the job with SIGINT (it saves a checkpoint of its last finished step and exits 0).

    With `wait` > 0, wait up to that many seconds for it to end.
    """
    run_dir = Path(run_dir)
    job = read_job(run_dir)
    if not is_alive(job):
        raise JobError(f"'{run_dir.name}' has no running job to interrupt")
    os.kill(job["pid"], signal.SIGINT)
    deadline = time.monotonic() + wait
    while wait and time.monotonic() < deadline and is_alive(read_job(run_dir)):
        time.sleep(0.2)
    return status(run_dir)


def wait(run_dir: str | Path, timeout: float = 600.0) -> JobStatus:
    """Block until the job ends (or `timeout` seconds pass); returns its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_alive(read_job(run_dir)):
        time.sleep(0.2)
    return status(run_dir)


def running_jobs(project_dir: str | Path, *, runs_folder: Path | None = None) -> list[Path]:
    """Run folders under `<project>/runs` whose job is running now (newest first)."""
    runs = runs_folder or Path(project_dir) / "runs"
    found = [(read_job(p.parent), p.parent) for p in runs.glob(f"*/{JOB_FILE}")]
    alive = [(job.get("started", 0), run) for job, run in found if is_alive(job)]
    return [run for _, run in sorted(alive, reverse=True)]


def attach(project_dir: str | Path, stopped: bool = False) -> Path | None:
    """The run folder a reloaded page or a restarted UI shows: the running job's; with `stopped`, else the
    newest job's (finished, with its report; interrupted or failed, so Resume continues it)."""
    running = running_jobs(project_dir)
    if running or not stopped:
        return running[0] if running else None
    runs = Path(project_dir) / "runs"
    started = sorted((read_job(p.parent).get("started", 0), p.parent) for p in runs.glob(f"*/{JOB_FILE}"))
    return started[-1][1] if started else None
