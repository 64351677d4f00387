"""The architecture holds: the rooms of src/mimovl import only downwards (.importlinter), and files stay small."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
MAX_LINES = 400


def lint(src: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the repo's contract, on the `mimovl` package under `src`."""
    return subprocess.run([str(LINT), "--config", str(ROOT / ".importlinter"), "--no-cache"], cwd=src,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src)}, capture_output=True, text=True,
                          timeout=300)


def test_every_room_imports_only_the_rooms_below_it():
    result = lint(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_or_an_unlisted_room_breaks_the_contract(tmp_path):
    """The contract is not vacuous: data importing stages (upward), and a room the contract does not list,
    each fail it."""
    upward = tmp_path / "upward"
    shutil.copytree(ROOT / "src" / "mimovl", upward / "mimovl", ignore=shutil.ignore_patterns("__pycache__"))
    with open(upward / "mimovl" / "data" / "tars.py", "a") as f:
        f.write("\nfrom mimovl.stages.base import StageModule  # noqa\n")
    result = lint(upward)
    assert result.returncode != 0
    assert "mimovl.data is not allowed to import mimovl.stages" in result.stdout, result.stdout

    unlisted = tmp_path / "unlisted"
    shutil.copytree(ROOT / "src" / "mimovl", unlisted / "mimovl", ignore=shutil.ignore_patterns("__pycache__"))
    (unlisted / "mimovl" / "extras.py").write_text('"""A room nobody placed."""\n')
    result = lint(unlisted)
    assert result.returncode != 0 and "mimovl.extras" in result.stdout + result.stderr, result.stdout


def test_no_source_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "src").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_reward_service_and_the_rewards_load_without_lightning_or_math_verify():
    """`python -m mimovl.serve` needs the reward model, not the training stack; `import mimovl.rewards` is cheap
    (math-verify loads at the first math reward)."""
    heavy = ("lightning", "mimovl.stages", "mimovl.fit", "math_verify")
    probe = f"import sys, mimovl.serve, mimovl.rewards.router; print([m for m in {heavy} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
