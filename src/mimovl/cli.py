"""What `python src/run.py` does with a composed config: run the stage it names, or say what is wrong.

A stage's YAML names the function that runs it (`stage.runner`): `mimovl.train.run` trains one stage (the
default), `mimovl.eval.run.evaluate` scores a policy on held-out prompts, `mimovl.programme.run_all` runs the
whole programme. Each returns its summary; the value under `optimized_metric` is what Hydra sweepers optimise.
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from mimovl.errors import UsageError

log = logging.getLogger(__name__)
DEFAULT_RUNNER = "mimovl.train.run"


def launch(cfg: DictConfig) -> float | None:
    """Runs `cfg.stage.runner`; returns summary[cfg.optimized_metric] (None when the summary lacks it)."""
    try:
        runner = hydra.utils.get_method(cfg.stage.get("runner") or DEFAULT_RUNNER)
        summary = runner(cfg)
    except UsageError as error:
        print(f"[mimovl] error: {error}", file=sys.stderr)
        sys.exit(2)
    metric = cfg.get("optimized_metric")
    return summary.get(metric) if metric else None
