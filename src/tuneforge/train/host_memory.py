"""Keep a CPU run's freed memory for its next step instead of handing it back to the OS after every tensor.

    with reuse_freed_memory():       # the loop enters it around a CPU run's steps
        ...                          # large tensors reuse resident memory: no page faults each step

glibc serves every allocation above its mmap threshold (never more than 32 MB) with a fresh mmap and unmaps it
on free, so a step's large tensors — a full fine-tune's gradients (the 49k x 576 embedding's is 113 MB),
the head's gradient sum, the logits buffers — are page-faulted in again at every step; in a virtual machine a
fault costs more than zeroing the page. Inside the block glibc takes large blocks from its heap instead
(M_MMAP_MAX 0) and keeps freed memory there (M_TRIM_THRESHOLD), so the next step reuses resident pages; on
leaving, the defaults come back and malloc_trim returns what is free. Intel's PyTorch CPU guide gets the same
by preloading jemalloc or tcmalloc, which needs the process started under LD_PRELOAD; glibc's own switches
need nothing installed. Only the allocator changes, so results are bit for bit the same (tested).

Where jemalloc is installed (Debian/Ubuntu: libjemalloc2; scripts/setup.sh installs it as root), `tuneforge
train` starts itself again with it preloaded (`with_jemalloc`), as Intel's guide and torch's own CPU launcher
(`python -m torch.backends.xeon.run_cpu --enable_jemalloc`) do: glibc's heap keeps about as much freed memory as
a step's live tensors, jemalloc's size classes reuse it (measured below). A Python process cannot change its
allocator once started, so the Python API keeps glibc's; TUNEFORGE_ALLOCATOR=glibc turns the switch off.

Measured with benchmarks/train_throughput.py's runs on 2 cores of an AMD EPYC (fp32, SmolLM2-135M): a full
fine-tune step on short lines 1.38 -> 1.00 s, on 256-token raw text 7.75 -> 6.53 s, LoRA q,v 5.33 -> 4.94 s;
LoRA on short lines unchanged within noise; peak RSS +1-3%. jemalloc against these settings, the benchmark's
worker on 2 cores of an AMD EPYC with AVX512-BF16 (bf16, 5 steps): peak RSS of a full fine-tune on 256-token
text 4057 -> 3366 MB, on packed short lines 3951 -> 3360 MB, LoRA q,v 1716 -> 1529 MB, LoRA on packed lines
1757 -> 1496 MB; steps of full-length or packed sequences as fast or faster, steps of a few unpacked short lines
10-25% slower (jemalloc's decay hands freed memory back to the OS; docs/training.md).

So on jemalloc the block also stops every arena's purging where only adapters train (LoRA, QLoRA): measured on
2 cores of an Intel Xeon with AMX (bf16, the worker of benchmarks/train_throughput.py, interleaved runs), page
faults of a LoRA q,v step ~115,000 -> ~1,000, its steps 1.26-1.41 against 1.39-1.59 s eager and 1.00-1.15
against 1.24-1.35 s compiled, peak RSS +15-65 MB; QLoRA and packed LoRA lines as fast or faster at +3-30 MB.
A full fine-tune keeps jemalloc's purging: never purging made its steps 5-11% quicker but raised its peak
250-540 MB (packed short lines 3050-3080 -> 3300-3600 MB: pages kept for the model-sized gradients fragment).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

# glibc's mallopt parameters (malloc.h) and their defaults
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
KEEP_UP_TO = 2**31 - 1  # mallopt takes an int: free memory at the heap's top is kept up to 2 GiB

_lock = threading.Lock()
_depth = 0  # nested or concurrent blocks (two runs in one process): the defaults return when the last leaves


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library when it is glibc (whose mallopt this uses), else None (musl, macOS, Windows)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def available() -> bool:
    """Whether this process's allocator can be told to keep freed memory (glibc)."""
    return _glibc() is not None


JEMALLOC_FOLDERS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
JEMALLOC_FILE = "libjemalloc.so.2"
ALLOCATOR_SETTING = "TUNEFORGE_ALLOCATOR"  # glibc: keep the C library's allocator


def find_jemalloc(folders=JEMALLOC_FOLDERS) -> str | None:
    """The path of an installed jemalloc shared library, or None."""
    for folder in folders:
        path = Path(folder) / JEMALLOC_FILE
        if path.is_file():
            return str(path)
    return None


def jemalloc_environment(environ, library: str | None, system: str = sys.platform) -> dict | None:
    """The environment to start this command again with `library` preloaded; None where that would not
    happen: no library, not Linux, switched off by TUNEFORGE_ALLOCATOR=glibc, or already preloaded."""
    if library is None or not system.startswith("linux") or environ.get(ALLOCATOR_SETTING) == "glibc":
        return None
    preloaded = environ.get("LD_PRELOAD", "")
    if "jemalloc" in preloaded:
        return None
    return {**environ, "LD_PRELOAD": f"{library} {preloaded}".strip()}


def with_jemalloc(argv: list[str]) -> None:
    """Start this process again as `argv` (the command line as run) with jemalloc preloaded, where it is
    installed and not yet loaded; returns without doing anything otherwise. The pid stays the same (exec)."""
    env = jemalloc_environment(os.environ, find_jemalloc())
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *argv], env)


@functools.lru_cache(maxsize=1)  # a process keeps the allocator it started with
def allocator_in_use() -> str:
    """'jemalloc' when this process runs on it (preloaded), else 'glibc' (Linux) or the platform's own."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "the platform's"
    return "jemalloc" if JEMALLOC_FILE in maps else "glibc"


def allocator_note() -> str:
    """One line for a CPU run's start: the allocator it runs on, and how to get jemalloc where it does not."""
    if allocator_in_use() == "jemalloc":
        return "host memory: jemalloc"
    library = find_jemalloc()
    if library is None:
        return (
            "host memory: glibc's allocator; with jemalloc installed (Debian/Ubuntu: libjemalloc2) "
            "`tuneforge train` runs on it: lower peak memory"
        )
    return (
        f"host memory: glibc's allocator; LD_PRELOAD={library} lowers peak memory (`tuneforge train` does it)"
    )


@contextmanager
def reuse_freed_memory(enabled: bool = True, on_jemalloc: bool = True):
    """Within the block, freed memory stays resident for reuse: on glibc large allocations come from its heap; on
    jemalloc (`on_jemalloc`) its arenas stop handing freed pages back to the OS. Yields whether the allocator
    was switched (False where it was not: off, or neither allocator)."""
    allocator = allocator_in_use() if enabled else None
    if allocator == "jemalloc" and on_jemalloc and (mallctl := _mallctl()) is not None:
        switch = (
            functools.partial(_jemalloc_stop_purging, mallctl),
            functools.partial(_jemalloc_restore, mallctl),
        )
    elif allocator == "glibc" and (libc := _glibc()) is not None:  # not under jemalloc: nothing uses glibc's
        switch = (functools.partial(_glibc_keep_freed, libc), functools.partial(_glibc_restore, libc))
    else:
        yield False
        return
    with _while_outermost(*switch):
        yield True


@contextmanager
def _while_outermost(switch_on, switch_off):
    """switch_on on entering the outermost of nested or concurrent blocks (two runs in one process), switch_off
    on leaving it."""
    global _depth
    with _lock:
        if _depth == 0:
            switch_on()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                switch_off()


def _glibc_keep_freed(libc) -> None:
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO)


def _glibc_restore(libc) -> None:
    libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
    libc.malloc_trim(0)  # what the run freed goes back to the OS now


# jemalloc's mallctl names (man 3 jemalloc): every arena's purge delays, the default of arenas made later, and
# "all arenas" as an index
DECAY_SETTINGS = ("dirty_decay_ms", "muzzy_decay_ms")
ALL_ARENAS = 4096  # MALLCTL_ARENAS_ALL
_jemalloc_defaults: dict[str, int] = {}  # the purge delays the outermost block found, put back when it ends


def _mallctl():
    """jemalloc's mallctl in this process (preloaded), or None."""
    try:
        function = ctypes.CDLL(None).mallctl
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def _decay_settings(mallctl) -> dict[str, int]:
    """The purge delays of every arena made so far (an arena index not yet in use reads as an error and is
    skipped), and the defaults of arenas made later (a thread's first allocation makes its arena)."""
    count, size = ctypes.c_uint(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_uint))
    if mallctl(b"arenas.narenas", ctypes.byref(count), ctypes.byref(size), None, 0):
        return {}
    names = [f"arena.{index}.{setting}" for index in range(count.value) for setting in DECAY_SETTINGS]
    settings = {name: _read_decay(mallctl, name) for name in names + [f"arenas.{s}" for s in DECAY_SETTINGS]}
    return {name: value for name, value in settings.items() if value is not None}


def _read_decay(mallctl, name: str) -> int | None:
    value, size = ctypes.c_ssize_t(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_ssize_t))
    failed = mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0)
    return None if failed else value.value


def _write_decay(mallctl, name: str, milliseconds: int) -> None:
    value = ctypes.c_ssize_t(milliseconds)
    mallctl(name.encode(), None, None, ctypes.byref(value), ctypes.sizeof(value))


def _jemalloc_stop_purging(mallctl) -> None:
    """No arena purges: every purge delay -1 ("never"), the huge-allocation arena's 0 ("at once", jemalloc's
    choice for blocks over 8 MB) too. With its defaults a LoRA step of the default model page-faulted ~115,000
    pages (450 MB) in again, ~1,000 without purging (benchmarks/train_throughput.py's worker on 2 AMX cores)."""
    _jemalloc_defaults.clear()
    _jemalloc_defaults.update(_decay_settings(mallctl))
    for name in _jemalloc_defaults:
        _write_decay(mallctl, name, -1)


def _jemalloc_restore(mallctl) -> None:
    """Every purge delay back as it was (arenas made meanwhile: the default they would have had), then every
    arena purges what is free."""
    for name in _decay_settings(mallctl):
        default = _jemalloc_defaults.get(name, _jemalloc_defaults.get(f"arenas.{name.rsplit('.', 1)[1]}"))
        if default is not None:
            _write_decay(mallctl, name, default)
    mallctl(f"arena.{ALL_ARENAS}.purge".encode(), None, None, None, 0)
