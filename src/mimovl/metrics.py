"""Numbers a run reports: sums over ranks, finiteness checks, and metrics that exist only at some steps.

`global_sum` is the one all-reduce every stage and the RL step use for their figures (`global_max` aligns counts
of work over ranks). `finite_or_none` keeps
NaN out of histories (JSON has no NaN); `all_finite` checks this rank's shards of a set of tensors.

A sample type or an RL task absent from a batch has no value at that step. Lightning's `self.log` keeps a logged
key in the epoch's results and sends its last value again at every later step; a streamed stage is one long
epoch, so an absent type would show its old value as if it were new. `log_present` sends such metrics straight
to the loggers, at this step only.
"""

import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def global_sum(value: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """`value` summed over all ranks (a copy; itself when not distributed). `device`: where the collective runs
    (the rank's GPU under NCCL); the result comes back on `value`'s device."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    reduced = value.to(device if device is not None else value.device, copy=True)
    dist.all_reduce(reduced)
    return reduced.to(value.device)


def global_max(value: int, device: torch.device | None = None) -> int:
    """The largest `value` over all ranks (itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    reduced = torch.tensor([value], device=device)
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return int(reduced[0])


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """Whether `flag` is true on any rank."""
    return bool(global_sum(torch.tensor([float(flag)]), device)[0] > 0)


def all_finite(tensors) -> bool:
    """Whether every element of `tensors` (this rank's shards) is finite."""
    flags = [torch.isfinite(t.to_local() if isinstance(t, DTensor) else t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def finite_or_none(value: float) -> float | None:
    """`value`, or None when it is NaN or infinite."""
    return value if math.isfinite(value) else None


def log_present(module, metrics: dict[str, float]) -> None:
    """Logs `metrics` (name -> value) at the current optimizer step, to every logger of the LightningModule
    `module` (rank zero only)."""
    if not metrics or not module.trainer.is_global_zero:
        return
    values = {name: float(value) for name, value in metrics.items()}
    for logger in module.loggers:
        logger.log_metrics(values, step=module.trainer.global_step)
