"""Where an RL step's time goes, in-place weight sync against restarting the rollout engine, and the update
with the prompt shared by its group against a prompt copy per response.

    python benchmarks/rl_step.py                    # the tiny test policy
    python benchmarks/rl_step.py --model small      # a ~30M-parameter policy (benchmarks/packing.py's "small")
    python benchmarks/rl_step.py --part update      # only rl.share_prompt on vs off (no vLLM needed)

The update part packs G responses of --new-tokens tokens to each of --prompts image prompts both ways
(`mimovl.rl.batch.rollout_batches`), then times forward + backward of the GRPO loss on each, in turns, --rounds
times (medians), and prints the tokens each update processes: (p - 1) + G * r per group shared, G * (p + r) not.

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


def update_share_prompt(model_size: str, prompts: int, group: int, new_tokens: int, rounds: int) -> dict:
    """Median seconds and tokens of one GRPO forward + backward with rl.share_prompt on and off."""
    import statistics

    import torch

    from mimovl.data.encode import IGNORE
    from mimovl.data.synthetic import make_sample
    from mimovl.generate.engines import Completion
    from mimovl.generate.prompts import to_prompt
    from mimovl.model.attention import use_attention
    from mimovl.model.build import build_tiny
    from mimovl.model.logits import token_losses
    from mimovl.model.packed import PackedVLM
    from mimovl.rl.batch import rollout_batches
    from mimovl.rl.grpo import LossConfig, group_advantages, policy_loss

    model, processor = build_tiny(seed=0, **SIZES[model_size])
    use_attention(model, "auto")
    net = PackedVLM(model.train())
    chosen = [to_prompt(make_sample("grounding", i, seed=0, split="train")) for i in range(prompts)]
    rng = torch.Generator().manual_seed(0)
    groups = [[Completion(torch.randint(10, len(processor.tokenizer) - 10, (new_tokens,), generator=rng).tolist(),
                          "", True) for _ in range(group)] for _ in chosen]
    advantages = group_advantages(torch.rand(prompts, group, generator=rng))
    batches = {share: rollout_batches(chosen, groups, advantages, processor, seq_len=1 << 20, share_prompt=share)[0]
               for share in (False, True)}
    seconds = {share: [] for share in batches}
    for _ in range(rounds + 1):  # the first round warms up
        for share, batch in batches.items():
            start = time.perf_counter()
            learned = batch["targets"] != IGNORE
            logp = -token_losses(net(batch, learned), batch["targets"][learned])
            loss, _ = policy_loss(logp, batch["advantages"][learned], batch["coef"][learned], LossConfig())
            loss.backward()
            model.zero_grad()
            seconds[share].append(time.perf_counter() - start)
    return {share: {"seconds": statistics.median(seconds[share][1:]),
                    "tokens": int((batch["segment_ids"] > 0).sum()),
                    "images": int(batch["image_grid_thw"].shape[0])} for share, batch in batches.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", choices=["all", "update"], default="all")
    args = parser.parse_args()
    update = update_share_prompt(args.model, args.prompts, args.group, args.new_tokens, args.rounds)
    print(f"model {args.model}: GRPO update of {args.prompts} image prompts x {args.group} responses x "
          f"{args.new_tokens} tokens")
    for share, r in update.items():
        print(f"  rl.share_prompt={str(share).lower():5s} {r['seconds']:.3f} s  {r['tokens']} tokens  "
              f"{r['images']} images through the vision tower")
    print(f"  shared/unshared: time {update[True]['seconds'] / update[False]['seconds']:.2f}, "
          f"tokens {update[True]['tokens'] / update[False]['tokens']:.2f}")
    if args.part == "update":
        return
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
