"""Optimizers and learning rate schedulers, built from the run config.

    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total_steps)
"""

from __future__ import annotations

import math


def build_optimizer(model, config):
    """AdamW (or SGD) over the trainable parameters; biases and norms get no weight decay."""
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate)
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             eps=config.adam_epsilon, fused=config.optimizer == "adamw_torch_fused" or None)


def warmup_steps(config, total_steps: int) -> int:
    return config.warmup_steps


def build_scheduler(optimizer, config, total_steps: int):
    """One of transformers' schedulers (the names text-generation-webui and the HF Trainer use)."""
    from transformers import get_scheduler

    warmup = warmup_steps(config, total_steps)
    if config.lr_scheduler == "inverse_sqrt" and warmup == 0:
        warmup = max(1, math.ceil(0.1 * total_steps))  # inverse_sqrt divides by sqrt(warmup): needs >= 1
    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
