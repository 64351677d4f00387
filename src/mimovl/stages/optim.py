"""The warm-up + cosine schedule of the cross-entropy and reward-model stages."""

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup_ratio: float, min_lr_ratio: float) -> dict:
    """Lightning's optimizer config: linear warm-up over `warmup_ratio` of `steps` (from lr 0: none in tiny
    runs), then cosine down to lr * `min_lr_ratio`, stepped every optimizer step."""
    steps = max(1, steps)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=int(warmup_ratio * steps), num_training_steps=steps, min_lr_rate=min_lr_ratio,
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
