"""Which weights a stage starts from, and the (model, processor) it starts with.

A stage starts from `stage.init_from`: null builds `cfg.model` (the tiny model, the MiMo-VL-7B composition or
any directory through model=hf); `previous` takes the previous stage's export under the run root; any other
value is a Qwen2.5-VL-format directory. stage=eval and every training stage start the same way.
"""

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mimovl.errors import UsageError, require
from mimovl.model.attention import BACKENDS, use_attention
from mimovl.model.build import load_hf

log = logging.getLogger(__name__)


def resolve_init(cfg: DictConfig) -> str | None:
    """The directory this stage starts from, or None to build `cfg.model` (says which)."""
    init = cfg.stage.init_from
    if init is None:
        return None
    if init == "previous":
        if not cfg.stage.previous:
            raise UsageError(f"stage.init_from=previous, but stage {cfg.stage.name} has no stage.previous: "
                             "set stage.init_from=DIR (a Qwen2.5-VL-format directory) or stage.init_from=null")
        path = Path(cfg.paths.run_root) / cfg.stage.previous / "hf"
        if not (path / "config.json").exists():
            log.warning("no %s export at %s: starting from model=%s", cfg.stage.previous, path, _model_name(cfg))
            return None
        return str(path)
    check_checkpoint(init, "stage.init_from")
    return str(init)


def describe_start(cfg: DictConfig, init: str | None) -> str:
    """What a stage starts from, in words: the directory, or the model config (and which export was missing)."""
    if init:
        return init
    missing = cfg.stage.init_from == "previous"
    return f"model={_model_name(cfg)}" + (f" (no {cfg.stage.previous} export under {cfg.paths.run_root}: run "
                                          f"stage={cfg.stage.previous} first, or stage=all, for a trained start)"
                                          if missing else "")


def check_checkpoint(path, key: str) -> None:
    """A UsageError naming `key` unless `path` is a Qwen2.5-VL-format directory."""
    if not (Path(path) / "config.json").is_file():
        problem = "does not exist" if not Path(path).exists() else "has no config.json"
        raise UsageError(f"{key}={path}: {problem}. Point it at a Qwen2.5-VL-format directory (a stage's hf/ "
                         "export, or a released checkpoint such as MiMo-VL-7B-SFT)")


def _model_name(cfg: DictConfig) -> str:
    """The model config's builder, e.g. build_tiny (random init) or load_hf."""
    name = str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1]
    return f"{name} (random init)" if name == "build_tiny" else name


def build_model(cfg: DictConfig, init: str | None):
    """(model, processor) for this stage: loaded from `init`, or built from cfg.model."""
    attention = cfg.model.get("attn", "auto")
    require(attention in BACKENDS, "model.attn", attention, f"one of {BACKENDS}")
    if init is not None:
        log.info("starting from %s", init)
        model, processor = load_hf(init)
        check_chat_template(processor, f"stage.init_from={init}")
    else:
        missing = [k for k in cfg.model if OmegaConf.is_missing(cfg.model, k)]
        if missing:
            raise UsageError(f"this model config needs {', '.join(f'model.{k}=...' for k in missing)} "
                             "(conf/model/ says what each one is)")
        settings = dict(cfg.model)
        settings.pop("attn", None)
        settings.pop("logits_chunk", None)  # the stage module's (stage.module.logits_chunk)
        if "path" in settings:
            check_checkpoint(settings["path"], "model.path")
        model, processor = hydra.utils.instantiate(settings)
        check_chat_template(processor, f"model.path={settings['path']}" if "path" in settings else "model")
    use_attention(model, attention)
    return model, processor


def check_chat_template(processor, where: str) -> None:
    """Chats are templated with the processor's chat template: a model without one cannot be trained here."""
    if not (getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)):
        raise UsageError(f"{where}: the model has no chat template. Add one to its directory "
                         "(chat_template.jinja, e.g. Qwen2.5-VL's, or an export's from this repo)")
