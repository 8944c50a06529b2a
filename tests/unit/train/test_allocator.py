"""`tuneforge train` run as a program starts again on jemalloc where it is installed (train/host_memory.py), once,
never when switched off or called from Python, and a run says which allocator it runs on."""

import subprocess
import sys

import pytest

from tuneforge.train import host_memory
from tuneforge.train.host_memory import find_jemalloc, jemalloc_environment


def test_jemalloc_is_found_where_a_distribution_installs_it(tmp_path):
    empty, lib = tmp_path / "empty", tmp_path / "lib"
    empty.mkdir()
    lib.mkdir()
    assert find_jemalloc([str(empty)]) is None
    (lib / "libjemalloc.so.2").write_bytes(b"")
    assert find_jemalloc([str(empty), str(lib)]) == str(lib / "libjemalloc.so.2")


@pytest.mark.parametrize(
    "environ, library, system, preload",
    [
        ({}, "/lib/libjemalloc.so.2", "linux", "/lib/libjemalloc.so.2"),
        (
            {"LD_PRELOAD": "/lib/other.so"},
            "/lib/libjemalloc.so.2",
            "linux",
            "/lib/libjemalloc.so.2 /lib/other.so",
        ),
        ({"LD_PRELOAD": "/lib/libjemalloc.so.2"}, "/lib/libjemalloc.so.2", "linux", None),  # already: no loop
        ({"TUNEFORGE_ALLOCATOR": "glibc"}, "/lib/libjemalloc.so.2", "linux", None),  # switched off
        ({}, None, "linux", None),  # not installed
        ({}, "/lib/libjemalloc.so.2", "darwin", None),
    ],
)
def test_the_environment_to_start_again_with(environ, library, system, preload):
    env = jemalloc_environment({"PATH": "/bin", **environ}, library, system)
    if preload is None:
        assert env is None
    else:
        assert env["LD_PRELOAD"] == preload and env["PATH"] == "/bin"


def test_train_starts_again_only_when_run_as_a_program(monkeypatch):
    from tuneforge.cli import main

    started = []
    monkeypatch.setattr(host_memory, "find_jemalloc", lambda: "/lib/libjemalloc.so.2")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("TUNEFORGE_ALLOCATOR", raising=False)
    monkeypatch.setattr(host_memory.os, "execve", lambda *args: started.append(args) or sys.exit(0))
    assert (
        main(["train", "--data", "missing.txt"]) == 2
    )  # called from Python: refused on its data, not restarted
    assert started == []
    monkeypatch.setattr(sys, "argv", ["tuneforge", "train", "--data", "missing.txt"])
    monkeypatch.setattr(
        sys, "orig_argv", [sys.executable, "-m", "tuneforge", "train", "--data", "missing.txt"]
    )
    with pytest.raises(SystemExit):
        main()
    ((executable, argv, env),) = started
    assert executable == sys.executable and argv == [
        sys.executable,
        "-m",
        "tuneforge",
        "train",
        "--data",
        "missing.txt",
    ]
    assert env["LD_PRELOAD"] == "/lib/libjemalloc.so.2"


@pytest.mark.skipif(find_jemalloc() is None, reason="jemalloc is not installed (Debian: libjemalloc2)")
def test_a_program_restarted_on_jemalloc_runs_on_it_with_the_same_pid():
    probe = (
        "import os, sys\n"
        "print('pid', os.getpid(), flush=True)\n"
        "from tuneforge.train.host_memory import allocator_in_use, with_jemalloc\n"
        "with_jemalloc(sys.orig_argv[1:])\n"
        "print('after', os.getpid(), allocator_in_use())\n"
    )
    env = {
        k: v for k, v in __import__("os").environ.items() if k not in ("LD_PRELOAD", "TUNEFORGE_ALLOCATOR")
    }
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    lines = done.stdout.split("\n")
    pids = [line.split()[1] for line in lines if line.startswith(("pid", "after"))]
    assert lines[-2].endswith("jemalloc"), done.stdout + done.stderr
    assert len(set(pids)) == 1 and len(pids) == 3  # printed before the restart, again after it, one process
    off = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**env, "TUNEFORGE_ALLOCATOR": "glibc"},
    )
    assert off.stdout.split("\n")[-2].endswith("glibc")


# In a fresh process on jemalloc: minor page faults of a step-like churn of tensors (over and under jemalloc's
# 8 MB huge-allocation size) outside the block, inside it, and after it; the arenas' purge delays before, inside
# and after the block.
JEMALLOC_FAULTS = """
import json, resource, time
import torch
from tuneforge.train.host_memory import _decay_settings, _mallctl, reuse_freed_memory

def churn():
    tensors = [torch.empty(n).fill_(1.0) for n in (3_000_000, 500_000, 6_000_000, 12_000_000)]
    del tensors

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        churn()
        time.sleep(0.05)  # jemalloc's decay purges as time passes
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

mallctl = _mallctl()
def delays():
    return _decay_settings(mallctl)

churn()
result = {"before": delays(), "faults": {"outside": faults()}}
with reuse_freed_memory() as switched:
    churn()
    result["faults"]["inside"] = faults()
    result["inside"] = delays()
with reuse_freed_memory(on_jemalloc=False) as off:
    result["off"] = off
result["after"] = delays()
result["switched"] = switched
print(json.dumps(result))
"""


@pytest.mark.skipif(find_jemalloc() is None, reason="jemalloc is not installed (Debian: libjemalloc2)")
def test_on_jemalloc_no_arena_purges_inside_the_block_and_its_settings_return_after():
    import json
    import os

    env = {**os.environ, "LD_PRELOAD": find_jemalloc()}
    done = subprocess.run(
        [sys.executable, "-c", JEMALLOC_FAULTS],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["switched"] and not result["off"]
    faults = result["faults"]
    assert faults["outside"] > 20_000, faults  # jemalloc's defaults hand the freed pages back: fresh ones
    assert faults["inside"] < faults["outside"] / 20, faults
    assert set(result["inside"].values()) == {-1}, result["inside"]
    assert {k: v for k, v in result["after"].items() if k in result["before"]} == result["before"]
    assert result["before"]["arenas.dirty_decay_ms"] > 0  # the defaults were not "never" to begin with
