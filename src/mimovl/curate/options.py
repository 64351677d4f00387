"""Step settings kept in dataclasses: defaults in code, overridden by a YAML file, then by command-line flags.

    cfg = load_config(FilterConfig, "filter.yaml", {"min_chars": 10})    # YAML keys are the field names

Each field's `metadata["help"]` documents it and becomes the --flag's help (underscores read as dashes).
An unknown YAML key is a UsageError naming it.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields, replace

import yaml

from mimovl.errors import UsageError


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """--config FILE plus one --flag per field of dataclass `cls` (unset flags keep the YAML / default)."""
    parser.add_argument("--config", help="YAML file of settings (keys: the flags below, with underscores)")
    for f in fields(cls):
        default = f.default if f.default is not MISSING else None
        kind = type(default)
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, type=_boolean, default=None, metavar="BOOL",
                                help=f"{f.metadata.get('help', '')} (default {default})")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"{f.metadata.get('help', '')} (default {default})")


def config_from_args(cls, args: argparse.Namespace):
    """The `cls` settings a parsed command line asks for (defaults < --config YAML < flags)."""
    overrides = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    return load_config(cls, args.config, overrides)


def load_config(cls, path: str | None = None, overrides: dict | None = None):
    """Defaults of `cls`, replaced by the YAML file at `path`, then by `overrides`."""
    values = {}
    if path:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise UsageError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    values.update(overrides or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UsageError(f"unknown {cls.__name__} setting(s) {unknown}; known: {sorted(names)}")
    return replace(cls(), **values)


def _boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
