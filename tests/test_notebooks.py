"""Every notebook runs top to bottom (its own asserts check what it shows)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# Notebooks that read a finished programme run: each has its own test, with the `programme` fixture.
NEEDS_A_RUN = {"read_a_run.ipynb", "interference.ipynb"}


def execute(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    resources = {"metadata": {"path": str(path.parent)}}  # run from notebooks/, as a user would
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources=resources).execute()


def test_there_are_notebooks():
    assert NOTEBOOKS
    assert NEEDS_A_RUN <= {path.name for path in NOTEBOOKS}


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name not in NEEDS_A_RUN], ids=lambda p: p.name)
def test_notebook_executes(path):
    execute(path)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_read_a_run_notebook(programme, monkeypatch):
    """read_a_run.ipynb on the session's programme run (the kernel inherits MIMOVL_RUN), so it reads the run
    rather than starting its own."""
    monkeypatch.setenv("MIMOVL_RUN", str(programme["root"] / "runs/mimo_vl"))
    execute(Path(__file__).resolve().parents[1] / "notebooks/read_a_run.ipynb")


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_interference_notebook(study, monkeypatch):
    """interference.ipynb on the session's small study (the kernel inherits MIMOVL_STUDY)."""
    monkeypatch.setenv("MIMOVL_STUDY", str(study["dir"]))
    execute(Path(__file__).resolve().parents[1] / "notebooks/interference.ipynb")
