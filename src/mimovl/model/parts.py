"""The three trainable parts of a Qwen2.5-VL model: the ViT, the projector (patch merger) and the LLM.

Stages name what they train by part (stage 1: projector; stage 2: vit + projector; stage 3+: all) and give
one learning rate per part. Names follow transformers' in-memory layout, with any wrapper prefix allowed
(a LightningModule's `model.` or FSDP's `_fsdp_wrapped_module.`) because parts are matched by substring.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

PARTS = ("vit", "projector", "llm")


def part_of(param_name: str) -> str:
    """'vit' for `model.visual.*` except the merger, 'projector' for `model.visual.merger.*`,
    'llm' for `model.language_model.*` and `lm_head.*`. Raises ValueError for anything else."""
    if "visual.merger." in param_name:
        return "projector"
    if "visual." in param_name:
        return "vit"
    if "language_model." in param_name or param_name.startswith("lm_head.") or ".lm_head." in param_name:
        return "llm"
    raise ValueError(f"parameter {param_name!r} belongs to none of {PARTS}")


def check_parts(parts: Iterable[str]) -> list[str]:
    """`parts` as a list, or a ValueError naming the unknown ones."""
    parts = list(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown model part(s) {unknown}; known parts are {list(PARTS)}")
    return parts


def set_trainable(model: nn.Module, parts: Iterable[str]) -> dict[str, int]:
    """Train exactly `parts` (requires_grad on), freeze the rest. Returns trainable parameter counts
    per part."""
    parts = set(check_parts(parts))
    counts = dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        part = part_of(name)
        param.requires_grad_(part in parts)
        if part in parts:
            counts[part] += param.numel()
    return counts


def param_groups(model: nn.Module, lr: dict[str, float], weight_decay: float) -> list[dict]:
    """One optimizer group per trainable part, `{"name": part, "params": [...], "lr": lr[part], ...}`.

    Frozen parameters are left out, and so is a part with nothing trainable. Every trainable part needs an
    entry in `lr` (a KeyError names the missing one); `lr` keys must be known parts.
    """
    check_parts(lr)
    groups: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(part_of(name), []).append(param)
    missing = [p for p in groups if p not in lr]
    if missing:
        raise KeyError(f"no learning rate for trainable part(s) {missing}; got lr for {sorted(lr)}")
    return [
        {"name": part, "params": groups[part], "lr": lr[part], "weight_decay": weight_decay}
        for part in PARTS
        if part in groups
    ]


def check_lr(trainable: list[str], lr: dict[str, float]) -> None:
    """A stage gives exactly one learning rate per trainable part (a config error otherwise)."""
    if set(lr) != set(trainable):
        raise ValueError(
            f"stage.module.lr must give one learning rate per trainable part: trainable={list(trainable)},"
            f" lr has {sorted(lr)}"
        )
