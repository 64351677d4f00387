"""What `python src/run.py` does with a composed config: run the stage it names, or say what is wrong.

A stage's YAML names the function that runs it (`stage.runner`, run by `mimovl.programme.run_stage`):
`mimovl.train.run` trains one stage (the default), `mimovl.eval.run.evaluate` scores a policy on held-out
prompts, `mimovl.programme.run_all` runs the whole programme. Each returns its summary; the value under
`optimized_metric` is what Hydra sweepers optimise. A `UsageError`, wherever it is raised (a config check,
inside Hydra's `instantiate`, in a DataLoader worker), ends the run as one line, `[mimovl] error: ...`, with
exit status 2.
"""

import logging
import sys

from omegaconf import DictConfig

from mimovl import console
from mimovl.errors import UsageError
from mimovl.programme import run_stage

log = logging.getLogger(__name__)


def launch(cfg: DictConfig) -> float | None:
    """Runs `cfg.stage.runner`; returns summary[cfg.optimized_metric] (None when the summary lacks it)."""
    console.configure(bool(cfg.get("verbose", False)))
    try:
        summary = run_stage(cfg)
    except Exception as error:
        usage = usage_error(error)
        if usage is None:
            raise
        log.debug("usage error", exc_info=error)  # the whole trace, in the run's log file
        print(f"[mimovl] error: {message_of(usage)}", file=sys.stderr)
        sys.exit(2)
    metric = cfg.get("optimized_metric")
    return summary.get(metric) if metric else None


def usage_error(error: BaseException) -> UsageError | None:
    """The UsageError behind `error`: itself, or one it was raised from (Hydra's InstantiationException wraps
    the error a constructor raised)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UsageError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def message_of(error: UsageError) -> str:
    """The error's own message. One re-raised from a DataLoader worker carries the worker's traceback in its
    text ("Caught UsageError in DataLoader worker process 0. Original Traceback ..."): its last line is the
    message."""
    text = str(error)
    if "Original Traceback" in text:
        text = text.rstrip().rsplit("UsageError: ", 1)[-1]
    return text
