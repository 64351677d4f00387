"""Sweeps and cluster launches: the Optuna searches (conf/hparams_search/), the submitit SLURM launchers
(conf/hydra/launcher/) and the recipe's launch scripts."""

import json
import subprocess
import sys
from pathlib import Path

import hydra
import optuna
import pytest
from conftest import USER_ENV
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


# ---- Optuna ----

@pytest.mark.slow
def test_optuna_lr_search_runs_trials_and_reports_the_best_loss(tmp_path):
    runs = tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "src/run.py"), "-m", "hparams_search=lr", "hydra.sweeper.n_trials=2",
           "debug=fast", "stage.max_steps=2", "logger=csv", "trainer.accelerator=cpu",
           "trainer.enable_progress_bar=false", f"paths.runs_dir={runs}", f"paths.data_dir={tmp_path}/data",
           "data.generate.n_per_type=16", "stage.seq_len=512", "data.num_workers=0"]
    subprocess.run(cmd, check=True, cwd=tmp_path, timeout=900)

    [sweep] = (runs / "multirun").iterdir()
    summaries = {p.parent.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/s1/summary.json")}
    assert sorted(summaries) == ["0", "1"]
    assert all(s["steps"] == 2 for s in summaries.values())
    # Each trial ran at the learning rate Optuna drew for it, inside the searched interval.
    lrs = {}
    for job in summaries:
        overrides = yaml.safe_load((sweep / job / ".hydra/overrides.yaml").read_text())
        [lr] = [float(o.split("=", 1)[1]) for o in overrides if o.startswith("stage.module.lr.projector=")]
        assert 1e-4 <= lr <= 1e-2
        lrs[job] = lr
    assert lrs["0"] != lrs["1"]

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    losses = {job: s["last_loss"] for job, s in summaries.items()}
    best = min(losses, key=losses.get)
    assert results["best_value"] == losses[best]
    assert results["best_params"]["stage.module.lr.projector"] == pytest.approx(lrs[best])


def _trial_overrides(params) -> tuple[list[str], dict]:
    """The overrides the Optuna sweeper gives one trial of `params` (hydra.sweeper.params), by its own code."""
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides

    sweeper = OptunaSweeperImpl(sampler=None, direction="maximize", storage=None, study_name=None, n_trials=1,
                                n_jobs=1, search_space=None, custom_search_space=None, params=params)
    distributions, fixed = create_params_from_overrides(sweeper._parse_sweeper_params_config())
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    [overrides] = sweeper._configure_trials([trial], distributions, fixed)
    return list(overrides), trial.params


def test_lr_search_config():
    cfg = compose_config("hparams_search=lr")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_.endswith("TPESampler")
    assert (cfg.optimized_metric, sweeper.direction, sweeper.n_trials, sweeper.sampler.seed) == \
        ("last_loss", "minimize", 20, 0)
    overrides, params = _trial_overrides(sweeper.params)
    assert overrides == [f"stage.module.lr.projector={params['stage.module.lr.projector']}"]


@pytest.mark.parametrize("recipe", [[], ["+recipe=mimo_vl"]], ids=["stage-file", "recipe"])
def test_rl_search_sets_all_three_learning_rates_from_one_key(recipe):
    cfg = compose_config("hparams_search=rl", *recipe)
    assert cfg.stage.name == "rl"
    assert (cfg.optimized_metric, cfg.hydra.sweeper.direction) == ("mean_reward_after", "maximize")
    overrides, params = _trial_overrides(cfg.hydra.sweeper.params)
    assert set(params) == {"rl.group_size", "search.lr"} and params["rl.group_size"] in (4, 8)
    # The trial's config: every part at the drawn learning rate, over the stage file's and the recipe's.
    trial = compose_config("hparams_search=rl", *recipe, *overrides)
    assert OmegaConf.to_container(trial.stage.module.lr, resolve=True) == \
        {part: pytest.approx(params["search.lr"]) for part in ("vit", "projector", "llm")}
    assert trial.rl.group_size == params["rl.group_size"]


# ---- submitit SLURM launchers ----

def sbatch_text(launcher_cfg, folder: Path) -> str:
    """The sbatch file submitit would submit for this launcher config: the executor is built the way
    hydra-submitit-launcher's BaseSubmititLauncher.launch builds it, without submitting anything."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    launcher = hydra.utils.instantiate(launcher_cfg)  # the plugin's SlurmLauncher, holding resolved params
    params = dict(launcher.params)
    params.pop("submitit_folder")
    executor = submitit.AutoExecutor(cluster="slurm", folder=folder,
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "uid")


@pytest.fixture
def fake_srun(tmp_path, monkeypatch):
    """submitit's SLURM executor refuses to exist where there is no `srun` on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")


@pytest.mark.parametrize("launcher, extra, expected, absent", [
    ("submitit_slurm", [], ["--nodes=1", "--ntasks-per-node=1", "--time=60"], ["--gpus-per-node"]),
    ("mimo_vl_7b", [], ["--nodes=8", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=12",
                        "--mem=512GB", "--time=4320", "--job-name=mimovl", "--signal=USR2@120"], ["--partition"]),
    ("mimo_vl_7b", ["hparams_search=lr", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2"],
     ["--nodes=2", "--ntasks-per-node=8", "--partition=gpu"], []),
])
def test_slurm_launchers_compose_and_reach_submitit(launcher, extra, expected, absent, tmp_path, fake_srun):
    cfg = compose_config("+recipe=mimo_vl", f"hydra/launcher={launcher}", *extra)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    flags = [line.removeprefix("#SBATCH ") for line in sbatch_text(cfg.hydra.launcher, tmp_path).splitlines()
             if line.startswith("#SBATCH ")]
    for flag in expected:
        assert flag in flags
    for name in absent:
        assert not any(f.startswith(name) for f in flags)


# ---- launch scripts ----

SCRIPTS = sorted((ROOT / "recipes").glob("*/*.sbatch"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script, stage", [
    ("launch.sbatch", "s1"), ("launch.sbatch", "s4"), ("launch_rl.sbatch", "rm_text"), ("launch_rl.sbatch", "rm"),
    ("launch_rl.sbatch", "rl"), ("launch_rl.sbatch", "eval"), ("launch_rl.sbatch", "all"),
])
def test_launch_scripts_compose(script, stage, tmp_path):
    """Each script's `srun python src/run.py ...` line, as bash expands it, composes with the repo's config."""
    if not (ROOT / f"conf/stage/{stage}.yaml").exists():
        pytest.skip(f"no conf/stage/{stage}.yaml yet")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A stand-in srun that records what it was asked to run: its own options, then the command.
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    (bin_dir / "srun").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_NNODES": "8", "SRUN_ARGS": str(tmp_path / "argv")}
    subprocess.run(["bash", str(ROOT / "recipes/mimo_vl" / script), stage], check=True, env=env, cwd=ROOT)
    argv = (tmp_path / "argv").read_text().splitlines()
    start = argv.index("python")
    srun_options, (command, overrides) = argv[:start], (argv[start + 1], argv[start + 2:])
    assert command == "src/run.py"
    cfg = compose_config(*overrides)
    assert (cfg.stage.name, cfg.run_name) == (stage, "mimo_vl")
    assert cfg.hydra.runtime.choices.recipe_values in ("mimo_vl/hf", "mimo_vl/mimo_vl_7b")  # the paper scale
    if stage == "eval":  # one process
        assert srun_options == ["--nodes=1", "--ntasks=1"]
    else:  # one rank per GPU of the 8 x 8 allocation
        assert srun_options == [] and (cfg.trainer.num_nodes, cfg.trainer.devices) == (8, 8)
        assert cfg.strategy._target_.endswith("fsdp2_strategy")
    if stage in ("rl", "eval", "all"):  # the colocated engine's share beside training; all of it for eval
        assert cfg.rollout.gpu_memory_utilization == (0.8 if stage == "eval" else 0.4)
        assert set(cfg.data.heldout) >= {"grounding", "reasoning"}


# ---- a plain multirun, tracked in W&B ----

@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rl_sweep_jobs_get_their_own_outputs_and_wandb_runs(tmp_path):
    """The README's sweep: `-m stage=rl rl.group_size=4,8`; each job its own output directory and W&B run,
    named after its overrides, grouped by the sweep."""
    runs = tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "src/run.py"), "-m", "stage=rl", "rl.group_size=4,8", "stage.steps=1",
           "rl.prompts_per_step=2", "rl.heldout_per_kind=2", "rl.max_new_tokens=8", "trainer.accelerator=cpu",
           "trainer.enable_progress_bar=false", f"paths.runs_dir={runs}", f"paths.data_dir={tmp_path}/data",
           "data.generate.n_per_type=16", "data.heldout_generate.n_per_type=8"]
    subprocess.run(cmd, check=True, cwd=tmp_path, timeout=900, env=USER_ENV)

    [sweep] = (runs / "multirun").iterdir()
    jobs = {p.parent.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/rl/summary.json")}
    assert sorted(jobs) == ["0", "1"]
    assert len({job["output_dir"] for job in jobs.values()}) == 2
    for num, size in (("0", 4), ("1", 8)):
        wandb_run = jobs[num]["wandb"]
        assert wandb_run["name"].startswith(f"rl-{num}-") and f"rl.group_size={size}" in wandb_run["name"]
        assert wandb_run["group"] == f"mimovl-{sweep.name}"
        assert Path(wandb_run["dir"]).is_dir() and Path(wandb_run["dir"]).parent.parent == sweep / num / "rl"
