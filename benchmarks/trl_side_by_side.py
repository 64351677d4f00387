"""Seconds per GRPO step, this project against TRL's `GRPOTrainer`, in one process on one policy directory.

Needs a venv with trl (a throwaway one: trl is not a project dependency) that sees the project's packages:

    python3 -m venv /tmp/trlvenv
    printf '%s\n' "$PWD/.venv/lib/python3.11/site-packages" "$PWD/src" \
        > /tmp/trlvenv/lib/python3.11/site-packages/project.pth
    /tmp/trlvenv/bin/pip install --no-deps 'trl==1.16.*' accelerate datasets pandas pyarrow multiprocess
    /tmp/trlvenv/bin/python benchmarks/trl_side_by_side.py            # a fresh tiny policy
    /tmp/trlvenv/bin/python benchmarks/trl_side_by_side.py --policy DIR --rollouts vllm

(--no-deps everywhere: pip must not replace the project's torch or transformers.)

Both sides train the same Qwen2.5-VL directory (default: `build_tiny` exported to a temp dir) on the same
synthetic image prompts (qa and grounding, scored by the project's rule rewards, `mimovl.rewards.safe_rewards`),
--prompts prompts x --group samples x --new-tokens tokens per step, one rollout and one optimizer step per step,
for 1 warm-up step + --steps timed ones. Every response is exactly --new-tokens long on both sides: the stop
tokens are masked until then (vLLM `min_tokens`, transformers `min_new_tokens`), so both generate and train on
the same number of tokens.

- mimovl: `stage=rl` in this process (`model=hf model.path=DIR`, dynamic sampling and the easy pool off), once
  per --rollouts engine (vllm: the default in-process vLLM engine; hf: transformers `generate`).
- TRL: `GRPOTrainer` on the same directory loaded as `Qwen2_5_VLForConditionalGeneration` and its processor,
  with a `datasets.Dataset` of the very prompts the mimovl run drew, in the same order, in TRL's conversational
  format (an "image" column), transformers generation (`use_vllm=False`: TRL's vLLM path pins vllm<=0.31),
  no activation checkpointing (TRL's default is on; the project's stage=rl has it off).

A step's seconds are the wall time between the ends of consecutive optimizer steps (a Lightning callback on
one side, a `TrainerCallback` on the other), so each includes everything the trainer does in a step. Prints
the median per side, mimovl's own split of its step (sync / generate / reward / train), the mean response
length each side logged, and last `mimovl_vs_trl_step_time=<mimovl vllm / TRL>`. One machine, side by side:
the figures compare, they are not absolute.
"""

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

try:
    import trl
    from trl import GRPOConfig, GRPOTrainer
except ImportError:
    sys.exit("trl_side_by_side.py needs trl, which is not a project dependency: make the throwaway venv this "
             "file's docstring describes and run it with that venv's python")

import lightning.pytorch as pl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from mimovl.generate.score import build_router  # noqa: E402
from mimovl.model.build import build_tiny, load_hf  # noqa: E402
from mimovl.model.export import export_hf  # noqa: E402
from mimovl.rewards import image_size, safe_rewards  # noqa: E402
from mimovl.train import run  # noqa: E402

PARTS = ("sync", "generate", "reward", "train")
# Image prompts with rule rewards; an override merges into conf/stage/rl.yaml's mix, so the rest are set to 0.
MIX = "{qa: 1.0, grounding: 1.0, gui: 0.0, video: 0.0, reasoning: 0.0, preference: 0.0}"
TASKS = ("math", "counting", "grounding_box")  # the rule tasks of those sources: both sides train on these alone


class StepClock(pl.Callback):
    """Writes to `path` the seconds of each training step, from one step's end to the next (the first from the
    start of training)."""

    def __init__(self, path: str):
        self.path, self.ends = Path(path), []

    def on_train_start(self, trainer, module) -> None:
        self.ends = [time.perf_counter()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())

    def on_train_end(self, trainer, module) -> None:
        self.path.write_text(json.dumps([b - a for a, b in zip(self.ends, self.ends[1:])]))


class FullLength(pl.Callback):
    """Masks the stop tokens until `new_tokens` are sampled, for this fit: in the policy's generation config
    (rollout=hf) and in every vLLM `SamplingParams` (rollout=vllm builds them in each generate call)."""

    def __init__(self, new_tokens: int):
        self.new_tokens, self.original = new_tokens, None

    def on_fit_start(self, trainer, module) -> None:
        import vllm

        module.model.generation_config.min_new_tokens = self.new_tokens
        self.original = vllm.SamplingParams
        vllm.SamplingParams = lambda **kw: self.original(**kw, min_tokens=self.new_tokens)

    def on_fit_end(self, trainer, module) -> None:
        import vllm

        vllm.SamplingParams = self.original


class TRLStepClock(TrainerCallback):
    """The same clock for transformers' Trainer, and the mean completion length TRL logs."""

    def __init__(self):
        self.ends, self.lengths = [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "completions/mean_length" in logs:
            self.lengths.append(logs["completions/mean_length"])

    @property
    def seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


def mimovl_overrides(tmp: Path, policy: Path, rollout: str, steps: int, args) -> list[str]:
    return [
        f"paths.runs_dir={tmp / rollout / 'runs'}", f"paths.data_dir={tmp / 'data'}", "logger=csv", "stage=rl",
        f"rollout={rollout}", "model=hf", f"model.path={policy}", "stage.init_from=null", f"stage.steps={steps}",
        "trainer.enable_progress_bar=false", "data.num_workers=0", "data.generate.n_per_type=64",
        "data.heldout_generate.n_per_type=8", "rl.heldout_per_kind=0", "rl.table_every=0",
        "rl.dynamic_sampling=false", "rl.easy_pool_probability=0.0", f"rl.prompts_per_step={args.prompts}",
        f"rl.group_size={args.group}", f"rl.max_new_tokens={args.new_tokens}", f"stage.mix={MIX}",
        f"rl.tasks=[{','.join(TASKS)}]",
        f"+callbacks.step_clock._target_={__name__}.StepClock",
        f"+callbacks.step_clock.path={tmp / rollout / 'steps.json'}",
        f"+callbacks.full_length._target_={__name__}.FullLength",
        f"+callbacks.full_length.new_tokens={args.new_tokens}",
    ]


def mimovl_run(cfg, tmp: Path, rollout: str) -> dict:
    """Seconds of each step, mean seconds of each part over the timed steps, and the mean response length."""
    summary = run(cfg)
    metrics = next(Path(summary["output_dir"]).glob("csv/version_*/metrics.csv"))
    rows = [r for r in csv.DictReader(open(metrics)) if r.get("time/train")][1:]
    parts = {part: statistics.mean(float(r[f"time/{part}"]) for r in rows) for part in PARTS}
    lengths = [h["length/mean"] for h in summary["history"]]
    return {"seconds": json.loads((tmp / rollout / "steps.json").read_text()), "parts": parts, "lengths": lengths}


def trl_dataset(prompts):
    """The prompts as TRL's conversational VLM rows (text turns and an "image" column: TRL puts the image in
    front of the first user turn's text, where the project's samples have it), with what the reward needs
    (answers as JSON: a column holds one type)."""
    from datasets import Dataset

    def turns(sample):
        return [{"role": m["role"], "content": "".join(part.get("text", "") for part in m["content"])}
                for m in sample["messages"]]

    return Dataset.from_list([{
        "prompt": turns(p.sample), "image": p.sample["images"][0], "task": p.task,
        "answer": json.dumps(p.answer), "image_size": list(image_size(p.sample)),
    } for p in prompts])


def rule_reward(completions, task, answer, image_size, **_):
    """mimovl's rule reward of each completion (TRL's reward-function signature)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return safe_rewards(task, texts, [json.loads(a) for a in answer], [tuple(s) for s in image_size])


def trl_run(policy: Path, prompts, steps: int, tmp: Path, args, lr: float) -> TRLStepClock:
    model, processor = load_hf(policy)
    config = GRPOConfig(
        output_dir=str(tmp / "trl"), max_steps=steps, per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=args.group,
        max_completion_length=args.new_tokens, generation_kwargs={"min_new_tokens": args.new_tokens},
        temperature=1.0, top_p=1.0, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, gradient_checkpointing=False, beta=0.0, num_iterations=1,
        shuffle_dataset=False, use_vllm=False, bf16=False, use_cpu=True, report_to=[], logging_steps=1,
        save_strategy="no", dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    clock = TRLStepClock()
    trainer = GRPOTrainer(model=model, reward_funcs=rule_reward, args=config, train_dataset=trl_dataset(prompts),
                          processing_class=processor, callbacks=[clock])
    trainer.train()
    return clock


def tiny_policy(out: Path) -> Path:
    model, processor = build_tiny(seed=0)
    return export_hf(model, processor, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, help="a Qwen2.5-VL directory (default: build_tiny, exported)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side (after 1 warm-up step)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rollouts", nargs="+", choices=["vllm", "hf"], default=["vllm", "hf"],
                        help="mimovl rollout engines to time (vllm first; the ratio is vllm's)")
    args = parser.parse_args()
    steps = args.steps + 1
    with tempfile.TemporaryDirectory() as tmp_name, initialize_config_dir(config_dir=str(ROOT / "conf"),
                                                                          version_base="1.3"):
        tmp = Path(tmp_name)
        policy = args.policy or tiny_policy(tmp / "policy")
        cfgs = {r: compose(config_name="config", overrides=mimovl_overrides(tmp, policy, r, steps, args))
                for r in args.rollouts}
        first = cfgs[args.rollouts[0]]
        # The prompts the mimovl runs draw: the same deterministic stream, filtered the same way (what the
        # run's reward router can score: without reward models, the rule-scored ones), for TRL's dataset.
        data = instantiate(first.stage.datamodule, _convert_="all")
        data.prepare_data()
        reward = OmegaConf.to_container(first.reward, resolve=True)
        router = build_router(reward["models"], reward.get("timeout", 60.0), reward.get("retries", 3))
        prompts = data.draw(args.prompts * steps, lambda p: router.can_score(p) and p.kind in TASKS)
        assert all(p.task and p.sample["images"] for p in prompts), "expected image prompts with rule rewards"
        # Interleaved by side: mimovl's first engine, TRL, then mimovl's other engine.
        results = {}
        results[f"mimovl rollout={args.rollouts[0]}"] = mimovl_run(first, tmp, args.rollouts[0])
        clock = trl_run(policy, prompts, steps, tmp, args, lr=float(first.stage.module.lr.llm))
        results[f"trl {trl.__version__} (transformers generate)"] = {"seconds": clock.seconds,
                                                                     "lengths": clock.lengths}
        for rollout in args.rollouts[1:]:
            results[f"mimovl rollout={rollout}"] = mimovl_run(cfgs[rollout], tmp, rollout)

    print(f"\npolicy {policy if args.policy else 'build_tiny (temp export)'}: {args.prompts} image prompts x "
          f"{args.group} samples x {args.new_tokens} new tokens; median of {args.steps} steps after 1 warm-up")
    medians = {}
    for name, r in results.items():
        medians[name] = statistics.median(r["seconds"][1:])
        split = "  ".join(f"{p} {r['parts'][p]:.2f}" for p in PARTS) if "parts" in r else ""
        print(f"  {name:44s} {medians[name]:7.2f} s/step  (steps {', '.join(f'{s:.2f}' for s in r['seconds'])}; "
              f"mean length {statistics.mean(r['lengths']):.1f})  {split}")
    names = list(medians)
    print(f"mimovl_vs_trl_step_time={medians[names[0]] / medians[names[1]]:.3f}")


if __name__ == "__main__":
    main()
