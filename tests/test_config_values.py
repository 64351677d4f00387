"""`+recipe=mimo_vl`, stage by stage at both scales: the numbers each stage gets, written out below (those of the
recipe before its values became plain files under conf/recipe_values/, plus the 7B run's batch sizes that were
launch.sbatch flags), checked against what Hydra composes. Also: a command-line override changes one key, the
model config has no `scale` to strip, rl/rollout/reward exist only where a stage reads them, and `--cfg job`
shows a 7B stage whole with its data."""

import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
MODELS = {"tiny": ["model=tiny"], "paper": ["model=mimo_vl_7b", "model.vit_path=/v", "model.llm_path=/l"]}
STAGES = ["s1", "s2", "s3", "s4", "sft", "rm", "rm_text", "rl", "eval", "all", "study"]
SAMPLING_STAGES = ["rl", "eval", "all", "study"]  # the stages that mount rl, rollout and reward

S3_MIX = {"caption": 1.0, "interleaved": 1.0, "text": 1.0, "ocr": 1.0, "grounding": 1.0, "gui": 1.0, "video": 1.0,
          "qa": 1.0, "reasoning": 1.0}
MIX = {  # stage.mix, the same at both scales
    "s1": {"caption": 1.0},
    "s2": {"caption": 1.0, "interleaved": 1.0},
    "s3": S3_MIX,
    "s4": {"caption": 0.5, "interleaved": 0.5, "text": 0.5, "ocr": 1.0, "grounding": 1.0, "gui": 1.0, "video": 1.0,
           "qa": 1.0, "reasoning": 2.0},
    "sft": S3_MIX,  # sft.yaml's mix merged into s3's (caption, interleaved and text stay in)
    "rm": {"preference": 1.0},
    "rm_text": {"preference": 1.0},
    "rl": {"grounding": 1.0, "gui": 1.0, "video": 1.0, "qa": 1.0, "reasoning": 1.0, "preference": 0.5},
    "eval": None,
}
ALL_STAGES = ["s1", "s2", "s3", "s4", "rm_text", "rm", "rl", "eval"]


def lr(value: float, parts=("vit", "projector", "llm")) -> dict:
    return {part: value for part in parts}


def training(lrs: dict, seq_len: int, tokens, steps, checkpointing: bool, batch_size=2, accumulate=1) -> dict:
    return {"stage.module.lr": lrs, "stage.seq_len": seq_len, "stage.tokens": tokens, "stage.steps": steps,
            "stage.module.activation_checkpointing": checkpointing, "stage.batch_size": batch_size,
            "stage.accumulate": accumulate}


def sampling(max_new_tokens: int, heldout_per_kind: int, pack_len: int, dtype: str, max_model_len: int) -> dict:
    return {"rl.max_new_tokens": max_new_tokens, "rl.heldout_per_kind": heldout_per_kind, "rl.pack_len": pack_len,
            "rollout.dtype": dtype, "rollout.max_model_len": max_model_len}


TINY_RL = sampling(32, 48, 1024, "float32", 2048)
PAPER_RL = sampling(32768, 256, 40960, "bfloat16", 40960)

EXPECTED = {
    # The CPU rehearsal (model=tiny): step counts instead of token budgets.
    ("tiny", "s1"): training({"projector": 1e-3}, 1024, None, 30, False),
    ("tiny", "s2"): training({"projector": 1e-3, "vit": 1e-4}, 1024, None, 30, False),
    ("tiny", "s3"): training(lr(1e-3), 1024, None, 40, False),
    ("tiny", "s4"): training(lr(2e-3), 1024, None, 220, False),
    ("tiny", "sft"): training(lr(1e-4), 1024, None, 100, False),
    ("tiny", "rm"): {**training(lr(5e-4), 512, None, 200, False), "stage.module.head_lr": 3e-3},
    ("tiny", "rm_text"): training(lr(1e-3), 512, None, 100, False),
    ("tiny", "rl"): {**training(lr(2e-4), 1024, None, 60, False, batch_size=8), "stage.prepare": True, **TINY_RL},
    ("tiny", "eval"): {"stage.max_new_tokens": None, "stage.per_kind": 48, **TINY_RL},
    ("tiny", "all"): {"stage.stages": ALL_STAGES, **TINY_RL},
    ("tiny", "study"): {"stage.update_tokens": 12000, "stage.steps": 60, "stage.prepare": True, **TINY_RL},
    # The report's numbers (model=mimo_vl_7b, model=hf); batch 1 x accumulate 8 is ours (launch.sbatch's before).
    ("paper", "s1"): training({"projector": 1e-3}, 8192, 300e9, None, True, 1, 8),
    ("paper", "s2"): training({"projector": 1e-4, "vit": 1e-5}, 8192, 167e9, None, True, 1, 8),
    ("paper", "s3"): training(lr(1e-5), 8192, 1.4e12, None, True, 1, 8),
    ("paper", "s4"): training(lr(2.5e-5), 32768, 550e9, None, True, 1, 8),
    ("paper", "sft"): training(lr(1e-5), 32768, 10e9, None, True),
    ("paper", "rm"): training(lr(1e-5), 8192, None, 2000, True, 1, 8),
    ("paper", "rm_text"): training(lr(1e-5), 8192, None, 2000, True, 1, 8),
    ("paper", "rl"): {**training(lr(1e-6), 40960, None, 500, True, batch_size=8), "stage.prepare": False, **PAPER_RL},
    ("paper", "eval"): {"stage.max_new_tokens": None, "stage.per_kind": 256, **PAPER_RL},
    ("paper", "all"): {"stage.stages": ALL_STAGES, **PAPER_RL},
    ("paper", "study"): {"stage.update_tokens": 2_000_000_000, "stage.steps": 2000, "stage.prepare": False,
                         **PAPER_RL},
}

SOURCES = ["caption", "interleaved", "ocr", "grounding", "gui", "video", "qa", "reasoning", "text", "preference"]
HELDOUT = ["grounding", "gui", "video", "qa", "reasoning", "preference"]
PAPER_DATA = {  # conf/data/mimo_vl.yaml with DATA unset; launch.sbatch passed these as +data.sources.* flags
    "root": "/data/mimovl", "generate": None, "heldout_generate": None, "num_workers": 8,
    "sources": {name: f"/data/mimovl/{name}/*.tar" for name in SOURCES},
    "heldout": {name: f"/data/mimovl/heldout/{name}/*.tar" for name in HELDOUT},
}


@lru_cache(maxsize=None)
def resolved(*overrides: str) -> dict:
    """The resolved job config (DATA unset; composed once per set of overrides: read it, do not change it)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def at(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.fixture(autouse=True)
def _default_data_dir(monkeypatch):
    monkeypatch.delenv("DATA", raising=False)  # conf/data/mimo_vl.yaml reads it


@pytest.mark.parametrize("scale,stage", list(EXPECTED), ids=lambda v: v)
def test_each_stage_gets_the_recipe_numbers(scale, stage):
    cfg = resolved("+recipe=mimo_vl", f"stage={stage}", *MODELS[scale])
    got = {key: at(cfg, key) for key in EXPECTED[scale, stage]}
    assert got == EXPECTED[scale, stage]
    if stage in MIX:
        assert cfg["stage"]["mix"] == MIX[stage]
    if stage not in ("eval", "all", "study"):
        assert cfg["trainer"]["accumulate_grad_batches"] == cfg["stage"]["accumulate"]
    assert cfg["run_name"] == "mimo_vl" and "recipe" not in cfg


def test_expected_covers_every_stage_at_both_scales():
    stage_files = sorted(p.stem for p in (CONF / "stage").glob("*.yaml"))
    assert sorted(STAGES) == stage_files
    assert set(EXPECTED) == {(scale, stage) for scale in MODELS for stage in STAGES}


@pytest.mark.parametrize("stage", STAGES)
def test_hf_models_get_the_7b_numbers(stage):
    """model=hf (a released checkpoint, or a stage's export) takes mimo_vl_7b's numbers and data."""
    paper = resolved("+recipe=mimo_vl", f"stage={stage}", *MODELS["paper"])
    hf = resolved("+recipe=mimo_vl", f"stage={stage}", "model=hf", "model.path=/ckpt")
    for key in ("stage", "data", "rl", "rollout"):
        assert hf.get(key) == paper.get(key), key


@pytest.mark.parametrize("stage", STAGES)
def test_the_7b_data_comes_with_the_recipe(stage):
    data = resolved("+recipe=mimo_vl", f"stage={stage}", *MODELS["paper"])["data"]
    assert {key: data[key] for key in PAPER_DATA} == PAPER_DATA
    tiny = resolved("+recipe=mimo_vl", f"stage={stage}")["data"]
    assert tiny["root"] == "data/synthetic" and tiny["generate"] is not None  # the tiny scale keeps its shards


def test_moving_the_7b_data():
    data = resolved("+recipe=mimo_vl", "stage=s1", *MODELS["paper"], "data.root=/scratch/d")["data"]
    assert data["sources"]["caption"] == "/scratch/d/caption/*.tar"
    assert data["heldout"]["qa"] == "/scratch/d/heldout/qa/*.tar"


@pytest.mark.parametrize("scale,others", [("tiny", 1e-3), ("paper", 1e-5)])
def test_one_learning_rate_overrides_one_key(scale, others):
    cfg = resolved("+recipe=mimo_vl", "stage=s3", *MODELS[scale], "stage.module.lr.vit=5e-4")
    assert cfg["stage"]["module"]["lr"] == {"vit": 5e-4, "projector": others, "llm": others}


def test_command_line_overrides_win_over_the_recipe():
    s3 = resolved("+recipe=mimo_vl", "stage=s3", *MODELS["paper"], "stage.steps=2", "stage.batch_size=4",
                  "stage.seq_len=4096")["stage"]
    assert (s3["steps"], s3["batch_size"], s3["seq_len"], s3["datamodule"]["seq_len"]) == (2, 4, 4096, 4096)
    assert s3["tokens"] == 1.4e12 and s3["accumulate"] == 8  # the rest stays the recipe's
    rl = resolved("+recipe=mimo_vl", "stage=rl", "rl.group_size=4", "++stage.max_steps=2", "rollout=hf")
    assert (rl["rl"]["group_size"], rl["stage"]["max_steps"], rl["stage"]["steps"]) == (4, 2, 60)
    assert rl["rl"]["max_new_tokens"] == 32 and rl["rollout"]["_target_"].endswith("HFRollout.from_policy")
    everything = resolved("+recipe=mimo_vl", "stage=all", "++stage.max_steps=2", "rl.group_size=4")
    assert everything["stage"]["max_steps"] == 2 and everything["rl"]["group_size"] == 4


@pytest.mark.parametrize("model", [["model=tiny"], ["model=hf", "model.path=/ckpt"], MODELS["paper"]])
@pytest.mark.parametrize("recipe", [[], ["+recipe=mimo_vl"]], ids=["stage-file", "recipe"])
def test_no_key_to_strip_before_instantiation(model, recipe):
    cfg = resolved(*recipe, "stage=s2", *model)
    assert "scale" not in cfg["model"] and "recipe" not in cfg


@pytest.mark.parametrize("stage", STAGES)
def test_rl_rollout_and_reward_only_where_a_stage_reads_them(stage):
    for recipe in ([], ["+recipe=mimo_vl"]):
        cfg = resolved(*recipe, f"stage={stage}")
        for group in ("rl", "rollout", "reward"):
            assert (group in cfg) == (stage in SAMPLING_STAGES), (recipe, group)


DATAMODULES = {"s1": "shards", "s2": "shards", "s3": "shards", "s4": "shards", "sft": "shards", "rm": "preference",
               "rm_text": "preference", "rl": "prompts", "eval": "heldout"}


@pytest.mark.parametrize("stage", list(DATAMODULES))
def test_each_stage_mounts_its_datamodule(stage):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"stage={stage}"], return_hydra_config=True)
    assert cfg.hydra.runtime.choices["datamodule@stage.datamodule"] == DATAMODULES[stage]
    target = OmegaConf.load(CONF / f"datamodule/{DATAMODULES[stage]}.yaml")["_target_"]
    assert cfg.stage.datamodule._target_ == target


def test_cfg_job_shows_a_7b_stage_whole():
    """`--cfg job` (unresolved) of the 7B stage 3: the report's numbers, our batch sizes and the data's patterns."""
    out = subprocess.run([sys.executable, str(ROOT / "src/run.py"), "+recipe=mimo_vl", "model=mimo_vl_7b",
                          "stage=s3", "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True).stdout
    cfg = yaml.safe_load(out)
    stage = cfg["stage"]
    assert (stage["batch_size"], stage["accumulate"], stage["seq_len"], float(stage["tokens"])) == (1, 8, 8192, 1.4e12)
    assert stage["module"]["lr"] == lr(1e-5) and stage["module"]["activation_checkpointing"] is True
    assert cfg["data"]["root"] == "${oc.env:DATA,/data/mimovl}"
    assert cfg["data"]["sources"] == {name: f"${{data.root}}/{name}/*.tar" for name in SOURCES}
    assert cfg["data"]["heldout"] == {name: f"${{data.root}}/heldout/{name}/*.tar" for name in HELDOUT}
    assert "scale" not in cfg["model"] and "recipe" not in cfg and "rl" not in cfg
