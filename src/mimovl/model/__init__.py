"""The model: a Qwen2.5-VL-format ViT + projector + LLM, its processor, parts, composition and export.

    build_tiny(**sizes) -> (model, processor)        random tiny model, CPU and tests
    load_hf(path, dtype) -> (model, processor)       any Qwen2.5-VL-format directory
    compose.compose(vit_path, llm_path, ...) -> (model, processor)   the MiMo-VL construction
    set_trainable(model, parts), param_groups(model, lr, weight_decay)   per-part training
    export_hf(model, processor, out_dir, state_dict=None)   a directory transformers and vLLM load
"""

from mimovl.model.build import build_tiny, load_hf

# `compose` (the function) is NOT re-exported here: it would shadow the submodule `mimovl.model.compose`,
# and Hydra's `_target_: mimovl.model.compose.compose` would then resolve to an attribute of the function.
from mimovl.model.compose import MIMO_VL_7B
from mimovl.model.export import export_hf, export_state_dict
from mimovl.model.parts import PARTS, param_groups, part_of, set_trainable
from mimovl.model.processor import DEFAULT_SYSTEM_PROMPT, build_tiny_processor, load_processor

__all__ = [
    "DEFAULT_SYSTEM_PROMPT", "MIMO_VL_7B", "PARTS", "build_tiny", "build_tiny_processor",
    "export_hf", "export_state_dict", "load_hf", "load_processor", "param_groups", "part_of", "set_trainable",
]
