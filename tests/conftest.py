"""Shared fixtures: a tiny exported Qwen2.5-VL directory and ONE vLLM engine over it per test session."""

import os

# vLLM reads these at import and engine start: keep the engine in this process, and its KV cache at 1 GiB
# (unset, one CPU engine sized a 21.7M-token cache and a second engine was killed for memory).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def make_image():
    """`make_image(width=168, height=112, seed=0)`: a deterministic noise image. 168x112 pixels are a
    12x8 grid of 14-pixel patches, i.e. 24 image tokens after the 2x2 merge."""

    def make(width: int = 168, height: int = 112, seed: int = 0) -> Image.Image:
        pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
        return Image.fromarray(pixels)

    return make


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """A `build_tiny(seed=0)` model exported with `export_hf` (float32). Treat it as read-only."""
    from mimovl.model import build_tiny, export_hf

    model, processor = build_tiny(seed=0)
    return export_hf(model, processor, tmp_path_factory.mktemp("tiny_hf"))


def pytest_collection_modifyitems(items):
    """Run the tests that use `vllm_engine` last. The in-process engine initialises torch.distributed
    (gloo, world size 1) for the rest of the session, and a Lightning fit started after it hung (seen:
    test_train's stage chain, 65 s alone, still waiting after 430 s)."""
    items.sort(key=lambda item: "vllm_engine" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def vllm_engine(tiny_hf_dir):
    """A `vllm.LLM` (float32, eager, one image per prompt) serving `tiny_hf_dir`; it starts in ~30 s.

    Shared by every test in the session: a test that syncs other weights into it must restore the
    weights of `tiny_hf_dir` before it returns. Torn down (process group included) at session end.
    """
    from vllm import LLM
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    engine = LLM(
        model=str(tiny_hf_dir), dtype="float32", max_model_len=1024, enforce_eager=True,
        limit_mm_per_prompt={"image": 1}, seed=0,
    )
    yield engine
    del engine
    cleanup_dist_env_and_memory()
