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


def fsdp2_strategy(devices: int | str, num_nodes: int = 1, save_distributed_checkpoint: bool = False):
    """Lightning's ModelParallelStrategy as pure FSDP2: data-parallel over every process, no tensor parallelism.

    `devices` is the trainer's (an int; -1 or "auto" means every local GPU, or one CPU process).
    """
    from lightning.pytorch.strategies import ModelParallelStrategy

    if devices in (-1, "-1", "auto"):
        devices = max(1, torch.cuda.device_count())
    return ModelParallelStrategy(
        data_parallel_size=int(devices) * num_nodes, tensor_parallel_size=1,
        save_distributed_checkpoint=save_distributed_checkpoint,
    )
