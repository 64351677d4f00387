"""Every shipped config composes, resolves and points at code that exists; the recipe sets the paper's numbers."""

from pathlib import Path

import hydra
import lightning.pytorch as pl
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, get_method
from omegaconf import OmegaConf

from mimovl.programme import DEFAULT_RUNNER
from mimovl.model.parts import PARTS
from mimovl.fit.trainer import build_trainer, stage_steps

CONF = Path(__file__).resolve().parents[1] / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def _resolve(cfg):
    hydra.core.utils.HydraConfig.instance().set_config(cfg)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return OmegaConf.to_container(job, resolve=True, throw_on_missing=False)


def _target_exists(node) -> None:
    target = node["_target_"]
    if target is None:
        return
    try:
        get_class(target)
    except Exception:
        get_method(target)


GROUPS = ["model", "stage", "data", "trainer", "strategy", "logger", "callbacks", "debug"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if option == "hf":
        overrides.append("model.path=/some/dir")
    if option == "shards":
        overrides.append("+data.sources.caption=/data/x.tar")
    cfg = _resolve(_compose(*overrides))
    for node in (cfg["model"], cfg["trainer"], cfg["strategy"], *(cfg["logger"] or {}).values(),
                 *cfg["callbacks"].values()):
        _target_exists(node)
    stage = cfg["stage"]
    if "module" in stage:
        _target_exists(stage["module"])
        _target_exists(stage["datamodule"])
    get_method(stage.get("runner") or DEFAULT_RUNNER)


# Stages with a runner of their own: eval scores, all and study run other stages.
TRAINING_STAGES = [s for s in _options("stage") if s not in ("eval", "all", "study")]


@pytest.mark.parametrize("stage", TRAINING_STAGES)
def test_stages_are_consistent(stage):
    cfg = _resolve(_compose(f"stage={stage}"))
    module = cfg["stage"]["module"]
    assert set(module["trainable"]) <= set(PARTS)
    assert set(module["lr"]) == set(module["trainable"])
    assert set(cfg["stage"]["mix"]) <= set(cfg["data"]["sources"])


def test_programme_runs_every_training_stage_then_eval():
    stages = _resolve(_compose("stage=all"))["stage"]["stages"]
    assert stages[-1] == "eval" and set(stages[:-1]) <= set(TRAINING_STAGES)
    assert stages.index("rm") < stages.index("rl") and stages.index("rm_text") < stages.index("rl")


@pytest.mark.parametrize("model", ["tiny", "hf", "mimo_vl_7b"])
@pytest.mark.parametrize("stage", _options("stage"))
def test_recipe_composes_on_every_stage_and_scale(stage, model):
    cfg = _compose("+recipe=mimo_vl", f"stage={stage}", f"model={model}")
    scale = "tiny" if model == "tiny" else "mimo_vl_7b"  # model=hf takes the 7B numbers
    assert cfg.hydra.runtime.choices[f"recipe_values/mimo_vl/{scale}"] == stage
    cfg = _resolve(cfg)
    if stage in TRAINING_STAGES:
        values = OmegaConf.load(CONF / f"recipe_values/mimo_vl/{scale}/{stage}.yaml")
        assert cfg["stage"]["module"]["lr"] == OmegaConf.to_container(values.stage.module.lr)


def test_recipe_sets_the_paper_numbers_on_real_models():
    s2 = _resolve(_compose("+recipe=mimo_vl", "stage=s2", "model=hf", "model.path=/ckpt"))["stage"]
    assert s2["module"]["lr"] == {"projector": 1e-4, "vit": 1e-5}
    assert s2["module"]["trainable"] == ["vit", "projector"]
    assert s2["seq_len"] == 8192 and s2["tokens"] == 167e9
    s4 = _resolve(_compose("+recipe=mimo_vl", "stage=s4", "model=mimo_vl_7b"))["stage"]
    assert s4["seq_len"] == 32768 and s4["module"]["lr"]["llm"] == 2.5e-5 and s4["module"]["activation_checkpointing"]
    rl = _resolve(_compose("+recipe=mimo_vl", "stage=rl", "model=mimo_vl_7b"))
    assert rl["stage"]["module"]["lr"]["llm"] == 1e-6 and rl["rl"]["max_new_tokens"] == 32768
    assert rl["rollout"]["dtype"] == "bfloat16"


def test_recipe_on_the_tiny_model_is_the_cpu_rehearsal():
    s4 = _resolve(_compose("+recipe=mimo_vl", "stage=s4"))["stage"]
    assert s4["seq_len"] == 1024 and s4["steps"] == 220 and not s4["module"]["activation_checkpointing"]
    rl = _resolve(_compose("+recipe=mimo_vl", "stage=rl"))
    assert rl["stage"]["steps"] == 60 and rl["rl"]["max_new_tokens"] == 32 and rl["rollout"]["dtype"] == "float32"
    # command-line overrides win over the recipe
    assert _resolve(_compose("+recipe=mimo_vl", "stage=rl", "stage.steps=2"))["stage"]["steps"] == 2


def test_steps_come_from_the_token_budget():
    stage = OmegaConf.create({"seq_len": 8192, "batch_size": 2, "accumulate": 4, "tokens": 300e9, "max_steps": None})
    assert stage_steps(stage, world_size=64) == 71526  # ceil(300e9 / (8192 * 2 * 4 * 64))
    stage.max_steps = 10
    assert stage_steps(stage, world_size=64) == 10


def test_7b_model_requires_component_paths():
    cfg = _compose("model=mimo_vl_7b")
    with pytest.raises(Exception, match="vit_path"):
        OmegaConf.to_container(cfg.model, resolve=True, throw_on_missing=True)


class OneUpdate(pl.LightningModule):
    """What build_trainer reads of a stage module (mimovl.stages.base.StageModule): one update per batch."""

    updates_per_batch = 1


@pytest.mark.parametrize("logger", _options("logger"))
def test_every_logger_builds_a_trainer(logger, tmp_path):
    cfg = _compose(f"logger={logger}", f"paths.runs_dir={tmp_path}", "trainer.accelerator=cpu")
    hydra.core.utils.HydraConfig.instance().set_config(cfg)
    trainer = build_trainer(cfg, OneUpdate())
    assert trainer.max_steps == stage_steps(cfg.stage, 1)
    assert (trainer.logger is None) == (logger == "none")


def test_the_tiny_quickstart_prepares_exactly_the_missing_stages_before_rl(tmp_path):
    """`+recipe=mimo_vl stage=rl` on the tiny model trains the missing stages before it (s1 -> s4, or from the
    last export there is); a start given as a directory, or the paper scale, prepares nothing."""
    from mimovl.programme import missing_chain

    overrides = ["+recipe=mimo_vl", f"paths.runs_dir={tmp_path}", "stage.steps=3"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "stage=rl"])
        assert cfg.stage.prepare is True
        chain = missing_chain(cfg, overrides)
        assert [c.stage.name for c in chain] == ["s1", "s2", "s3", "s4"]
        assert [c.stage.steps for c in chain] == [30, 30, 40, 220]  # the tiny scale's, not the command's stage.*
        (tmp_path / "mimo_vl/s2/hf").mkdir(parents=True)
        (tmp_path / "mimo_vl/s2/hf/config.json").write_text("{}")
        assert [c.stage.name for c in missing_chain(cfg, overrides)] == ["s3", "s4"]
        given = compose(config_name="config", overrides=[*overrides, "stage=rl", f"stage.init_from={tmp_path}"])
        assert missing_chain(given, overrides) == []
        paper = compose(config_name="config", overrides=[*overrides, "stage=rl", "model=hf", "model.path=/x"])
        assert paper.stage.prepare is False
