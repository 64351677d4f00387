"""FSDP2 sharding of a Qwen2.5-VL model: one unit per ViT block, per decoder layer, then the root."""

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def shard_model(packed, mesh, param_dtype: torch.dtype | None = None) -> None:
    """Applies `fully_shard` per ViT block and decoder layer, then to `packed` (a `PackedVLM`) as the root.

    `param_dtype` (e.g. bfloat16 on GPUs) computes in that dtype while keeping float32 master weights and
    reducing gradients in float32.
    """
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    model = packed.hf
    for block in model.model.visual.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    for layer in model.model.language_model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(packed, mesh=mesh, mp_policy=policy)


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU: gathered on rank 0 when sharded (every rank must call), as is otherwise."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
