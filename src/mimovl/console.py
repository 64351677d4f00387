"""What a person sees in the terminal: this project's messages, warnings that matter, one progress bar a stage.

`python src/run.py` logs through Hydra's job logging (conf/hydra/job_logging/mimovl.yaml): everything goes to the
run's log file (`<output_dir>/run.log`); the console gets `ConsoleFilter`'s share. `configure(verbose)` runs before
any library is imported by a stage; `verbose=true` (or `-v`) puts everything on the console again.

Libraries that talk past Python's logging are told to be quiet here too: vLLM's own log handler (its records then
reach the log file through the root logger), its weight-loading bars, transformers' save bars, PyTorch's C++
warnings, W&B's terminal output, and library deprecation notices (logged at INFO).
"""

import logging
import os
import warnings

PROJECT = "mimovl"
# Loggers whose warnings are for their developers rather than for a user of this project (all are in the log file).
DEVELOPER_LOGGERS = ("vllm", "torch", "py.warnings.library")
_verbose = False


class ConsoleFilter(logging.Filter):
    """Passes this project's records (INFO and up unless `hydra.verbose` lowers a logger's level), other
    libraries' from WARNING, and from the developer-facing loggers only errors; everything when verbose."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _verbose:
            return True
        name = record.name
        if name == PROJECT or name.startswith(PROJECT + "."):
            return True  # at the level its logger is set to (hydra.verbose=mimovl.rl.callback: debug lines too)
        if any(name == n or name.startswith(n + ".") for n in DEVELOPER_LOGGERS):
            return record.levelno >= logging.ERROR
        return record.levelno >= logging.WARNING


def configure(verbose: bool = False) -> None:
    """Sets the libraries' own output switches; call before a stage imports them."""
    global _verbose
    _verbose = verbose
    os.environ["VLLM_CONFIGURE_LOGGING"] = "0"  # vLLM's records go through the root logger's handlers
    if not verbose:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # C++ notices such as NUMA binding
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")  # library bars (weight loading, shard writing)
        os.environ.setdefault("WANDB_SILENT", "true")  # the run's place is printed by mimovl.train
    import lightning.pytorch  # noqa: F401  (after the variables above: it imports torch; it adds its handlers)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "torch"):
        library = logging.getLogger(name)
        library.handlers.clear()  # their own stream handlers would print every record a second time
        library.propagate = True
    warnings.showwarning = _log_warning


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as log records: this project's and user-facing ones at WARNING, libraries' deprecation
    notices at INFO under `py.warnings.library` (in the log file, not on the console)."""
    text = warnings.formatwarning(message, category, filename, lineno, line).strip()
    ours = f"{os.sep}{PROJECT}{os.sep}" in filename
    if not ours and issubclass(category, (DeprecationWarning, FutureWarning, PendingDeprecationWarning)):
        logging.getLogger("py.warnings.library").info(text)
    else:
        logging.getLogger("py.warnings").warning(text)
