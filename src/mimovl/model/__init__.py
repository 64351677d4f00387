"""The model: a Qwen2.5-VL-format ViT + projector + LLM, its processor, parts, composition and export."""

from mimovl.model.processor import DEFAULT_SYSTEM_PROMPT, build_tiny_processor, load_processor

__all__ = ["DEFAULT_SYSTEM_PROMPT", "build_tiny_processor", "load_processor"]
