"""Optimizers and learning rate schedulers, built from the run config.

    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total_steps)

AdamW (`adamw_torch`, the default) runs torch's fused kernel wherever torch has one for every trainable
parameter (CPU since torch 2.4, CUDA, MPS): one kernel over all tensors instead of the single-tensor path torch
takes on a CPU by default (~800 small elementwise kernels a step for a 135M model, measured 15x slower on 2 CPU
cores). The update is the same within fp32 rounding (tests/unit/test_speed_levers.py).
"""

from __future__ import annotations

import math

from tuneforge.errors import ConfigError


def _parameter_groups(model, config) -> list[dict]:
    """Biases and norm weights get no weight decay (the usual AdamW practice). With loraplus_lr_ratio, LoRA's B
    matrices and the 1-D weights (biases, DoRA's magnitudes) train at that many times the learning rate, as PEFT's
    create_loraplus_optimizer groups them (LoRA+; the scheduler scales every group's rate alike). An empty group
    is left out: DeepSpeed drops it from the optimizer, and a schedule over the groups then counts one too many."""
    ratio = getattr(config, "loraplus_lr_ratio", None)
    groups: dict[tuple[bool, bool], list] = {
        (fast, decay): [] for fast in (False, True) for decay in (True, False)
    }
    for name, param in model.named_parameters():
        if param.requires_grad:
            fast = bool(ratio) and ("lora_B" in name or param.ndim == 1)
            decay = not (param.ndim < 2 or "norm" in name.lower())
            groups[fast, decay].append(param)
    return [
        {
            "params": params,
            "weight_decay": config.weight_decay if decay else 0.0,
            **({"lr": config.learning_rate * ratio} if fast else {}),
        }
        for (fast, decay), params in groups.items()
        if params
    ]


def build_optimizer(model, config):
    """The optimizer named by `config.optimizer` over the trainable parameters."""
    import torch

    groups = _parameter_groups(model, config)
    betas = (config.adam_beta1, config.adam_beta2)
    name = config.optimizer
    if name == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # with an explicit learning rate, Adafactor's own relative step sizing must be off
        return Adafactor(
            groups, lr=config.learning_rate, scale_parameter=False, relative_step=False, warmup_init=False
        )
    if name in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError(
                f"optimizer {name} needs bitsandbytes: pip install 'tuneforge[quant]'"
            ) from None
        cls = {
            "adamw_8bit": bnb.optim.AdamW8bit,
            "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
            "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
        }[name]
        return cls(groups, lr=config.learning_rate, betas=betas, eps=config.adam_epsilon)
    settings = dict(lr=config.learning_rate, betas=betas, eps=config.adam_epsilon)
    if fused_adamw_supported(groups):
        return torch.optim.AdamW(groups, fused=True, **settings)
    if name == "adamw_torch_fused":
        raise ConfigError(
            "optimizer adamw_torch_fused needs every trainable parameter as a float tensor on a "
            "device torch has the fused kernel for (cpu, cuda, mps); use optimizer: adamw_torch"
        )
    return torch.optim.AdamW(groups, **settings)  # torch's own choice: for-each on CUDA, single-tensor else


def fused_adamw_supported(groups: list[dict]) -> bool:
    """Whether torch's fused AdamW kernel takes every parameter of `groups` (floating point, a supported device)."""
    import torch

    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # torch < 2.4: no fused kernel on the CPU
        devices = {"cuda"}
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(p.device.type in devices and torch.is_floating_point(p) for p in params)


def ratio_warmup_steps(ratio: float, total_steps: int) -> int:
    """A warm-up of `ratio` of all steps but the last, rounded up as the HF Trainer does: a warm-up's first step
    runs at learning rate 0, so a 1-step run (a trial, `--max_steps 1`) warmed up for its one step trained
    nothing."""
    return min(math.ceil(ratio * total_steps), max(0, total_steps - 1))


def warmup_steps(config, total_steps: int) -> int:
    """warmup_steps when set, else ratio_warmup_steps of warmup_ratio."""
    if config.warmup_steps:
        return config.warmup_steps
    steps = ratio_warmup_steps(config.warmup_ratio, total_steps)
    chosen = getattr(config, "recipe", "") == "auto" and "warmup_ratio" not in getattr(
        config, "given_keys", ()
    )
    # recipe auto's warm-up is never one step at rate 0 and nothing else (defaults.py): its own rule, applied to
    # the run's real length (the defaults planned it before examples without loss were dropped, or max_time)
    return 0 if chosen and steps == 1 else steps


def build_scheduler(optimizer, config, total_steps: int):
    """One of transformers' schedulers (the names text-generation-webui and the HF Trainer use).

    The scheduler carries its plan, `schedule_plan` (plain numbers, saved and restored with its state), so a
    resumed or time-boxed run can re-plan the rest of the schedule (train/schedule.py).
    """
    from transformers import get_scheduler

    name, warmup = _schedule_name_and_warmup(config, warmup_steps(config, total_steps), total_steps)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    scheduler.schedule_plan = [{"warmup_steps": warmup, "total_steps": total_steps}]
    return scheduler


def schedule_curve(config, warmup: int, total_steps: int):
    """The learning rate multiplier by step of `build_scheduler`'s schedule with this warm-up and length."""
    import torch
    from transformers import get_scheduler

    name, warmup = _schedule_name_and_warmup(config, warmup, total_steps)
    parameter = torch.nn.Parameter(torch.zeros(1))
    scheduler = get_scheduler(
        name, torch.optim.SGD([parameter], lr=1.0), num_warmup_steps=warmup, num_training_steps=total_steps
    )
    return scheduler.lr_lambdas[0]


def _schedule_name_and_warmup(config, warmup: int, total_steps: int) -> tuple[str, int]:
    name = config.lr_scheduler
    if name == "inverse_sqrt" and warmup == 0:
        warmup = max(1, math.ceil(0.1 * total_steps))  # inverse_sqrt divides by sqrt(warmup): needs >= 1
    if name == "constant" and warmup:
        name = "constant_with_warmup"  # transformers' "constant" would silently ignore the warm-up asked for
    return name, warmup
