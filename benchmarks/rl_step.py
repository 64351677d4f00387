"""Where an RL step's time goes, and in-place weight sync against restarting the rollout engine.

    python benchmarks/rl_step.py                    # the tiny test policy
    python benchmarks/rl_step.py --model small      # a ~30M-parameter policy (benchmarks/packing.py's "small")

Runs `stage=rl` for --steps steps (random-init policy, synthetic prompts, dynamic sampling off so every step is
one rollout round) and prints the mean seconds per step of: weight sync, generation, reward scoring and the
training update, from the run's own metrics. Then, in the same process, times one in-place sync of the
policy's weights against a restart of the vLLM engine on the same export (the report restarts its engine for
every update). Figures are for comparing side by side on one machine, not absolute.
"""

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from hydra import compose, initialize_config_dir  # noqa: E402
from packing import SIZES  # noqa: E402

from mimovl.model.build import load_hf  # noqa: E402
from mimovl.generate import engines  # noqa: E402
from mimovl.train import run  # noqa: E402

PARTS = ("sync", "generate", "reward", "train")


def rl_run(tmp: Path, model: str, steps: int, prompts: int, group: int, new_tokens: int) -> dict:
    sizes = [f"+model.{k}={v}" for k, v in SIZES[model].items()]
    overrides = [
        f"paths.runs_dir={tmp / 'runs'}", f"paths.data_dir={tmp / 'data'}", "logger=csv", "stage=rl",
        "stage.init_from=null", f"stage.steps={steps}", "trainer.enable_progress_bar=false",
        "data.num_workers=0", "data.generate.n_per_type=64", "data.heldout_generate.n_per_type=8",
        "rl.dynamic_sampling=false", f"rl.prompts_per_step={prompts}", f"rl.group_size={group}",
        f"rl.max_new_tokens={new_tokens}", "rl.heldout_per_kind=1", "rl.table_every=0",
        "stage.mix={qa: 1.0, reasoning: 1.0, grounding: 1.0, gui: 1.0, video: 1.0}", *sizes,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return run(compose(config_name="config", overrides=overrides))


def step_times(output_dir: Path) -> dict[str, float]:
    """Mean seconds per step of each part, skipping the first step (warm-up)."""
    metrics = next(output_dir.glob("csv/version_*/metrics.csv"))
    rows = [r for r in csv.DictReader(open(metrics)) if r.get("time/train")]
    rows = rows[1:] or rows
    times = {part: sum(float(r[f"time/{part}"]) for r in rows) / len(rows) for part in PARTS}
    times["tokens_per_sec"] = sum(float(r["rollout/tokens_per_sec"]) for r in rows) / len(rows)
    return times


def sync_vs_restart(summary: dict) -> tuple[float, float]:
    """Seconds for one in-place sync, and for stopping and starting the engine on the same export."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    spec = Path(summary["output_dir"]) / "rollout_start"
    settings = dict(dtype="float32", max_model_len=2048, limit_mm_per_prompt={"image": 2, "video": 1},
                    gpu_memory_utilization=0.3, enforce_eager=True, seed=0, distributed=False)
    engine = engines.VLLMRollout(spec, **{k: v for k, v in settings.items()})
    model, _ = load_hf(summary["hf_dir"])
    start = time.perf_counter()
    engine.sync(model.state_dict().items())
    sync = time.perf_counter() - start
    start = time.perf_counter()
    engines._ENGINES.clear()
    del engine
    cleanup_dist_env_and_memory()
    engines.VLLMRollout(spec, **settings)
    return sync, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        summary = rl_run(Path(tmp), args.model, args.steps, args.prompts, args.group, args.new_tokens)
        times = step_times(Path(summary["output_dir"]))
        sync, restart = sync_vs_restart(summary)
    total = sum(times[p] for p in PARTS)
    print(f"\nmodel {args.model}: {args.prompts} prompts x {args.group} samples x {args.new_tokens} new tokens")
    for part in PARTS:
        print(f"  {part:9s} {times[part]:8.3f} s  ({times[part] / total:5.1%})")
    print(f"  rollout tokens/s: {times['tokens_per_sec']:.0f}")
    print(f"in-place sync {sync:.3f} s vs engine restart {restart:.1f} s: restart costs {restart / sync:.0f}x")


if __name__ == "__main__":
    main()
