"""Shared fixtures: a tiny exported Qwen2.5-VL directory and ONE vLLM engine over it per test session."""

import os
import re

import numpy as np
import pytest
from PIL import Image


# What a user's shell has: none of the variables that steer vLLM, W&B or the Hub. Tests that run a user's command
# give the child this environment; the project sets what its libraries need itself.
USER_ENV = {k: v for k, v in os.environ.items() if not re.match(r"(VLLM|WANDB|HF)_", k)}


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


def _uses_vllm(item) -> bool:
    starts_engine = {"vllm_engine", "programme", "study"} & set(getattr(item, "fixturenames", ()))
    return bool(starts_engine) or item.get_closest_marker("vllm") is not None


def _uses_study(item) -> bool:
    return "study" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items):
    """Run the tests that start vLLM last. The in-process engine initialises torch.distributed (gloo, world
    size 1) and binds OpenMP threads for the rest of the session; a DataLoader worker forked after that hangs
    (seen: test_train's stage chain, 65 s alone, still waiting after 430 s). The study's tests come after all
    of them: its arms reuse the programme's RL engine (one engine per config and process) and sync their own
    weights into it, while test_rl reads what the RL run's last sync left there."""
    items.sort(key=lambda item: (_uses_vllm(item), _uses_study(item)))


# The engine settings of conf/rollout/vllm.yaml (seed 0): RL runs in the same session reuse this engine.
ENGINE_SETTINGS = {"dtype": "float32", "max_model_len": 2048, "limit_mm_per_prompt": {"image": 2, "video": 1},
                   "gpu_memory_utilization": 0.3, "enforce_eager": True, "seed": 0}


@pytest.fixture(scope="session")
def vllm_engine(tiny_hf_dir):
    """A `mimovl.generate.engines.VLLMRollout` (float32, eager) started from `tiny_hf_dir`; it starts in ~30 s.

    One engine per session, shared with every RL run of the session (engines are kept per process by what
    they serve). Its weights are whatever was synced last: a test syncs the weights it means to use.
    Torn down (process group included) at session end.
    """
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    from mimovl.generate.engines import VLLMRollout

    yield VLLMRollout(tiny_hf_dir, **ENGINE_SETTINGS)
    cleanup_dist_env_and_memory()


# The programme's CE and reward-model stages read data in this process: a DataLoader worker forked after an
# engine started (by an earlier test in the session) would hang.
PROGRAMME = ["data.num_workers=0", "data.generate.n_per_type=400", "data.heldout_generate.n_per_type=64"]


@pytest.fixture(scope="session")
def programme(tmp_path_factory) -> dict:
    """`+recipe=mimo_vl stage=all` at the tiny scale (s1 -> s2 -> s3 -> s4 -> rm_text -> rm -> rl -> eval), once
    per session; its summary, plus `root`: the directory holding `runs/` and `data/`. Tests using it are marked
    vllm (it starts an engine)."""
    from stagerun import run_programme

    root = tmp_path_factory.mktemp("programme")
    return {**run_programme(root, *PROGRAMME), "root": root}


# The interference study's small version: two tasks of different lengths (math answers think first), a budget a
# few rollout steps spend, small groups.
STUDY = ["stage.tasks=[math,grounding_box]", "stage.update_tokens=800", "stage.steps=4", "rl.group_size=4",
         "rl.prompts_per_step=4", "rl.heldout_per_kind=8"]


@pytest.fixture(scope="session")
def study(programme) -> dict:
    """`+recipe=mimo_vl stage=study` (STUDY) from the programme's stage-4 policy, under the programme's run root,
    once per session; its summary, plus `dir`: the study's directory."""
    from stagerun import run_study

    summary = run_study(programme["root"], *PROGRAMME, *STUDY)
    return {**summary, "dir": programme["root"] / "runs/mimo_vl/study"}
