"""Which device to run on and which number format computes fastest there, decided once per machine.

    from tuneforge.hardware import pick_device, pick_precision
    device = pick_device("auto")                 # cuda, mps or cpu
    precision = pick_precision("auto", device)   # bf16 where it is fast, else fp32 (fp16 on old GPUs)

On a CPU, flags do not settle whether bf16 is fast (AMX: ~5x fp32; AVX512-BF16 alone: often 2x slower), so
`auto` times a bf16 and an fp32 matmul. That takes ~0.1 s and 32 matmuls, so the answer is cached in
$TUNEFORGE_HOME/machine.json, keyed by the CPU model, its flags, torch's version and the thread count.

On a shared machine, torch's default of one thread per core makes every thread wait on the slowest, whose core
another process holds; `choose_threads()` counts the cores that are free now, and `RunThreads` drops threads
during a run when other processes take cores (and takes them back when they are free). Waiting OpenMP threads
spin a moment before they sleep (`bounded_openmp_waits()`, before torch is imported): quicker steps when idle.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import time

from tuneforge.errors import ModelError
from tuneforge.paths import tuneforge_home

MACHINE_FILE = "machine.json"


def pick_device(device: str = "auto") -> str:
    import torch

    from tuneforge.config import DEVICES

    cuda_index = isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit()
    if device not in DEVICES and not cuda_index:
        raise ModelError(f"device {device!r} is not one of {', '.join(DEVICES)} (or cuda:N for one GPU)")
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(
                f"device '{device}' was asked for but no CUDA GPU is visible; use device: auto or cpu"
            )
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def bf16_supported(device: str) -> bool:
    """Whether bf16 compute is supported and fast here: CUDA Ampere+, or a CPU where bf16 matmuls win."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    if device == "cpu":
        try:
            if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                return False
        except (AttributeError, RuntimeError):
            return False
        return cpu_bf16_speedup() >= 1.3
    return False


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX (amx_bf16 in /proc/cpuinfo): bf16 matmuls several times faster than fp32."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and " amx_bf16" in line for line in cpuinfo)
    except OSError:
        return False


def cpu_key() -> str:
    """What the bf16/fp32 speed ratio depends on: CPU model and flags, torch version, threads."""
    import torch

    model_and_flags = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags"))][:2]
        model_and_flags = "".join(lines)
    except OSError:
        pass
    text = f"{model_and_flags}|{torch.__version__}|{torch.get_num_threads()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How much faster a bf16 matmul is than fp32 on this CPU: read from the machine cache, else measured."""
    path = tuneforge_home() / MACHINE_FILE
    key = cpu_key()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("bf16_speedup"), (int, float)):
        return float(entry["bf16_speedup"])
    speedup = measure_bf16_speedup()
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = {"bf16_speedup": round(speedup, 3), "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:  # best effort: a read-only home just means measuring again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{MACHINE_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return speedup


def measure_bf16_speedup() -> float:
    """Time one (512x576)·(576x1536) matmul in fp32 and in bf16, best of 3 rounds of 5; fp32 time / bf16 time."""
    import torch

    def seconds(dtype) -> float:
        a = torch.randn(512, 576, dtype=dtype)
        b = torch.randn(1536, 576, dtype=dtype)
        torch.nn.functional.linear(a, b)  # warm-up: kernel selection
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(5):
                torch.nn.functional.linear(a, b)
            best = min(best, time.perf_counter() - start)
        return best

    return seconds(torch.float32) / seconds(torch.bfloat16)


def pick_precision(precision: str, device: str) -> str:
    """Resolve 'auto' to bf16 where the hardware computes it fast, fp16 on older GPUs, else fp32."""
    from tuneforge.config import PRECISIONS

    if precision not in PRECISIONS:
        spelled = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "half": "fp16", "float": "fp32"}
        hint = f" (did you mean '{spelled[precision]}'?)" if precision in spelled else ""
        raise ModelError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}{hint}")
    if precision != "auto":
        if precision == "bf16" and device == "cuda" and not bf16_supported(device):
            raise ModelError("this GPU has no bf16 support; use precision: fp16 or auto")
        return precision
    if bf16_supported(device):
        return "bf16"
    return "fp16" if device == "cuda" else "fp32"


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def usable_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity mask: taskset, cgroups cpusets)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def _cpu_times(cores: list[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over `cores` from /proc/stat; None where there is no /proc."""
    wanted = {f"cpu{core}" for core in cores}
    busy = total = 0.0
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                name, *fields = line.split()
                if name in wanted:
                    values = [float(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                    total += sum(values)
                    busy += sum(values) - values[3] - values[4]
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total else None


def busy_cores(seconds: float = 0.2) -> float:
    """How many of this process's cores other work keeps busy: sampled from /proc/stat over `seconds` while
    this process sleeps, else the 1-minute load average (which cannot tell others' work from ours)."""
    cores = usable_cores()
    before = _cpu_times(cores)
    if before is not None:
        time.sleep(seconds)
        after = _cpu_times(cores)
        if after is not None and after[1] > before[1]:
            return len(cores) * (after[0] - before[0]) / (after[1] - before[1])
    try:
        return min(float(len(cores)), os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def cpu_threads_words(n: int) -> str:
    """'1 CPU thread', '2 CPU threads'."""
    return f"{n} CPU thread{'' if n == 1 else 's'}"


def choose_threads(requested: int | None = None, load: float | None = None) -> tuple[int, str]:
    """Torch's CPU thread count for a run and why: `requested` when set, else one thread per free core.

    `load` is how many cores other processes keep busy (measured by busy_cores() when None). A core counts as
    free when it is at least half idle, and a run always gets one thread.
    """
    cores = len(usable_cores())
    if requested:
        over = (
            f"; more than the {cores} cores, so threads wait for each other: expect it slower"
            if requested > cores
            else ""
        )
        return requested, f"{cpu_threads_words(requested)} (num_threads){over}"
    load = busy_cores() if load is None else max(0.0, load)
    free = max(1, min(cores, math.floor(cores - load + 0.5)))
    if free == cores:
        return free, f"{cpu_threads_words(free)}, one per core"
    return free, (
        f"{cpu_threads_words(free)} of {cores} cores: other processes keep "
        f"{load:.1f} cores busy (set num_threads to choose)"
    )


def bounded_openmp_waits() -> bool:
    """Let idle OpenMP threads spin a moment before they sleep (unless the user chose a policy). Between two
    of a step's ops a sleeping thread must be woken, which PASSIVE waits did for every op: on 2 cores with AMX a
    LoRA q,v step on raw text took 1.85-2.07 s with them against 1.53-1.66 s spinning, one on short lines
    0.71 against 0.37 s. GNU OpenMP (torch's wheels) spins 300,000 times by default before sleeping, so it is
    left as it is; Intel's spins 200 ms by default, cut to 1 ms here. On a shared machine RunThreads below
    drops the threads that would wait on busy cores. Only works before torch is imported (the OpenMP runtime
    reads these once, when loaded); returns whether it was in time."""
    import sys

    os.environ.setdefault("KMP_BLOCKTIME", "1")  # Intel OpenMP (torch builds linked with libiomp)
    return "torch" not in sys.modules


def _set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


RECHECK_SECONDS = 60.0  # while a run has fewer threads than it chose, how often it looks for freed cores


class RunThreads:
    """Torch's CPU threads while a run trains. `mode` "follow" (threads chosen from the free cores): a step much
    slower than the usual (the loop's slow-step warning) measures the other processes' load again and drops to
    the cores still free, since threads spinning at a barrier wait for one whose core another process holds;
    while below the chosen count it looks again every RECHECK_SECONDS and goes back up once the cores are free.
    "given" (num_threads set): the count is kept, and a slow step that finds fewer free cores says how to
    avoid the waits. "off" (a GPU, one of several processes): nothing. `measure` (busy_cores) and `set_threads`
    (torch.set_num_threads) are arguments so tests can fake them.
    """

    def __init__(self, chosen: int, mode: str, measure=None, set_threads=None, clock=time.monotonic):
        self.chosen = self.current = chosen
        self.mode = mode
        self.measure = measure or busy_cores
        self.set_threads = set_threads or _set_torch_threads
        self.clock = clock
        self.checked_at = clock()

    def after_step(self, slow: bool) -> str | None:
        """A message when the thread count changed after this step (or, given, should), else None."""
        if self.mode == "off" or (self.mode == "given" and not slow):
            return None
        now = self.clock()
        if not slow and (self.current >= self.chosen or now - self.checked_at < RECHECK_SECONDS):
            return None
        self.checked_at = now
        free, _ = choose_threads(load=self.measure())
        if self.mode == "given":
            if free >= self.current:
                return None
            return (
                f"other processes keep cores busy: {free} of {len(usable_cores())} free for num_threads "
                f"{self.current}; fewer threads (or OMP_WAIT_POLICY=PASSIVE when starting) keep the run from "
                "waiting on them"
            )
        free = min(free, self.chosen)
        if free == self.current:
            return None
        before, self.current = self.current, free
        self.set_threads(free)
        if free < before:
            return (
                f"{cpu_threads_words(free)} from now on: other processes keep {self.chosen - free} of the "
                f"run's {self.chosen} cores busy (set num_threads to choose)"
            )
        return f"back to {cpu_threads_words(free)}: the cores other processes used are free again"
