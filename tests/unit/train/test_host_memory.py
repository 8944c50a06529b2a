"""A CPU run keeps its freed memory for the next step (train/host_memory.py): large tensors stop page-faulting
in the block, the allocator's defaults come back after it, and training computes the same bits either way."""

import pytest
import torch

from tuneforge.train import host_memory
from tuneforge.train.host_memory import reuse_freed_memory

pytestmark = pytest.mark.skipif(not host_memory.available(), reason="glibc's mallopt is not available here")

# In a fresh process (this one's heap holds what earlier tests freed): minor page faults of allocating and
# filling a tensor again after one of its size was freed, outside the block and inside it; and whether a tensor
# larger than glibc's whole heap gets a mapping of its own (mallinfo2's hblks), as glibc's defaults do, outside,
# inside and after the block. (A freed block that fits stays in the heap whatever the settings, so the defaults
# coming back are checked with a block the heap cannot hold.)
FAULTS = """
import ctypes, json, resource
import torch
from tuneforge.train.host_memory import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def again(megabytes):
    torch.empty(megabytes * 2**18).fill_(1.0)  # allocated, touched, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(megabytes * 2**18).fill_(2.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def own_mapping():
    floats = (libc.mallinfo2().arena + 2**26) // 4  # 64 MB more than the heap holds
    before = libc.mallinfo2().hblks
    tensor = torch.empty(floats)
    return libc.mallinfo2().hblks - before

faults = {"outside": again(64)}
mapped = {"outside": own_mapping()}
with reuse_freed_memory() as switched:
    again(64)  # the heap grows once
    faults["inside"] = again(64)
    with reuse_freed_memory():  # nested: leaving the inner block keeps the outer one's setting
        pass
    faults["inside, after a nested block"] = again(64)
    mapped["inside"] = own_mapping()
mapped["after"] = own_mapping()
print(json.dumps({"switched": switched, "faults": faults, "mapped": mapped}))
"""


def test_freed_memory_is_reused_inside_the_block_and_the_defaults_return_after():
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    faults, mapped = result["faults"], result["mapped"]
    assert result["switched"]
    assert faults["outside"] > 4_000, faults  # 16k pages of 4 kB mapped afresh (fewer with huge pages)
    assert faults["inside"] < faults["outside"] / 10, faults
    assert faults["inside, after a nested block"] < faults["outside"] / 10, faults
    assert mapped == {"outside": 1, "inside": 0, "after": 1}


def test_the_block_does_nothing_where_it_is_off_or_not_glibc(monkeypatch):
    with reuse_freed_memory(enabled=False) as switched:
        assert not switched
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    with reuse_freed_memory() as switched:
        assert not switched


def test_a_full_fine_tune_computes_the_same_bits_with_memory_reused(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    """Reused memory is not zeroed as fresh pages are: any code that read memory it never wrote would train
    differently here."""
    import tuneforge as tf
    import tuneforge.train.setup as setup

    results = {}
    for reuse in (True, False):
        monkeypatch.setattr(
            setup, "reuse_freed_memory", lambda on=reuse, **kept: reuse_freed_memory(enabled=on, **kept)
        )
        llm = tf.load(str(tiny_model_dir), precision="fp32")
        run = llm.train(
            lines_file,
            method="full",
            output_dir=str(tmp_path / str(reuse)),
            max_steps=4,
            batch_size=8,
            micro_batch_size=4,
            learning_rate=1e-3,
            validation_split=0,
            recipe="textgen",
            show_progress=False,
        )
        results[reuse] = (run.losses, [p.detach().clone() for p in llm.model.parameters()])
    assert results[True][0] == results[False][0]
    assert all(torch.equal(a, b) for a, b in zip(results[True][1], results[False][1], strict=True))
