"""Running stages in-process from the shipped configs, for tests."""

from pathlib import Path

from hydra import compose, initialize_config_dir

from mimovl.programme import run_stage as run_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def quick_overrides(tmp: Path, *overrides: str) -> list[str]:
    """The overrides of a quick CPU run writing under tmp (data under tmp/data unless overridden), then
    `overrides`: what `compose_run` composes, and the command line of the same run as a subprocess."""
    base = [
        f"paths.runs_dir={tmp / 'runs'}", f"paths.data_dir={tmp / 'data'}", "logger=csv",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "stage.seq_len=512", "stage.batch_size=2",
    ]
    if not any(o.startswith("data=") for o in overrides):
        base.append("data.generate.n_per_type=48")
    return base + list(overrides)


def compose_run(tmp: Path, *overrides: str):
    """The composed config for a quick CPU run writing under tmp (data under tmp/data unless overridden)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=quick_overrides(tmp, *overrides))


def run_stage(tmp: Path, *overrides: str) -> dict:
    return run_config(compose_run(tmp, *overrides))


def run_programme(tmp: Path, *overrides: str) -> dict:
    """`+recipe=mimo_vl stage=all` in-process under tmp (tiny scale); returns the programme's summary."""
    from mimovl.programme import run_all

    return _run_recipe(run_all, "all", tmp, *overrides)


def run_study(tmp: Path, *overrides: str) -> dict:
    """`+recipe=mimo_vl stage=study` in-process under tmp (tiny scale); returns the study's summary."""
    from mimovl.study import run_study as run

    return _run_recipe(run, "study", tmp, *overrides)


def _run_recipe(runner, stage: str, tmp: Path, *overrides: str) -> dict:
    """`+recipe=mimo_vl stage=<stage>` in-process under tmp, by a runner composing its stages from the same
    overrides (stage.* overrides are the runner's own)."""
    base = [
        f"paths.runs_dir={tmp / 'runs'}", f"paths.data_dir={tmp / 'data'}", "logger=csv",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "+recipe=mimo_vl",
    ]
    every = base + [o for o in overrides if not o.startswith("stage.")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*every, *overrides, f"stage={stage}"])
        return runner(cfg, overrides=every)
