"""What the cross-entropy and reward-model stages share: the warm-up + cosine schedule, and sums over ranks."""

import torch
import torch.distributed as dist
from transformers import get_cosine_with_min_lr_schedule_with_warmup


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup_ratio: float, min_lr_ratio: float) -> dict:
    """Lightning's optimizer config: linear warm-up over `warmup_ratio` of `steps` (from lr 0: none in tiny
    runs), then cosine down to lr * `min_lr_ratio`, stepped every optimizer step."""
    steps = max(1, steps)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=int(warmup_ratio * steps), num_training_steps=steps, min_lr_rate=min_lr_ratio,
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over all ranks (a copy; itself when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value
