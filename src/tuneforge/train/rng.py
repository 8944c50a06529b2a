"""The random states a run draws from (Python, numpy, torch, CUDA), taken and put back: a checkpoint saves them,
and an abandoned step rewinds them so a resumed run replays the step's dropout draws exactly.

    saved = rng_state()
    torch.rand(3)
    restore_rng_state(saved)   # the next torch.rand(3) draws the same numbers again
"""

from __future__ import annotations

import random


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def jsonable_rng(state: dict) -> dict:
    """`state` as torch.save(weights_only) can read back: numpy's key array as a tensor."""
    import torch

    kind, keys, pos, has_gauss, cached = state["numpy"]
    state = dict(state)
    state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    return state
