"""Tokens per second, through Lightning's ThroughputMonitor."""

import warnings

from lightning.pytorch.callbacks import ThroughputMonitor

from mimovl.rl.data import RolloutRequest

# FLOPs are not counted (no MFU from this monitor), so its notice that they are not is not news.
warnings.filterwarnings("ignore", message="When using the `ThroughputMonitor`, you need to define a `flops_per_batch`")


def _packed(batch) -> list[dict]:
    """The packed batches of a step: the batch itself, or the micro-batches an RL step answered its request with."""
    if isinstance(batch, RolloutRequest):
        return [micro for minibatch in batch.rollout().minibatches for micro in minibatch]
    return [batch]


def real_tokens(batch: dict) -> int:
    """Non-padding tokens of a packed batch."""
    return sum(int((b["segment_ids"] > 0).sum()) for b in _packed(batch))


def rows(batch: dict) -> int:
    """Packed rows in the batch."""
    return sum(int(b["input_ids"].shape[0]) for b in _packed(batch))


def token_throughput_monitor(window_size: int = 5) -> ThroughputMonitor:
    """Logs `train/device/items_per_sec`: real tokens per second over the last `window_size` steps (its
    `samples_per_sec` counts packed rows)."""
    return ThroughputMonitor(batch_size_fn=rows, length_fn=real_tokens, window_size=window_size)
