"""One RL step (`mimovl.rl.step.rl_step`) on the tiny policy with transformers generation and the rule rewards:
what it returns is exactly the groups it sampled, packed with their advantages and aggregation weights."""

import itertools

import pytest
import torch

from mimovl.data.encode import IGNORE
from mimovl.data.synthetic import make_sample
from mimovl.generate.engines import HFRollout
from mimovl.generate.prompts import to_prompt
from mimovl.model.build import build_tiny
from mimovl.rewards.router import RewardRouter
from mimovl.rl.grpo import group_advantages
from mimovl.rl.sampling import EasyPool
from mimovl.rl.step import RLConfig, rl_step, step_metrics, trained_tokens


@pytest.fixture(scope="module")
def policy():
    return build_tiny(seed=0)


def prompt_stream():
    """Rule-scored prompts of three sources, in a fixed order (open-ended ones, which need a reward model, left
    out)."""
    for i in itertools.count():
        for kind in ("qa", "grounding", "reasoning"):
            prompt = to_prompt(make_sample(kind, i, seed=0, split="train"))
            if prompt.task is not None:
                yield prompt


def one_step(policy, **settings):
    model, processor = policy
    stream = prompt_stream()
    drawn = []

    def draw(k):
        drawn.append(k)
        return list(itertools.islice(stream, k))

    config = RLConfig(**{"group_size": 4, "prompts_per_step": 3, "max_new_tokens": 8, "dynamic_sampling": False,
                         "pack_len": 2048, **settings})
    step = rl_step(None, HFRollout(model), RewardRouter(), draw, config, processor, EasyPool(0.0, 8, 0), seed=7)
    return step, drawn


def test_a_step_packs_exactly_the_groups_it_sampled(policy):
    step, drawn = one_step(policy, loss={"minibatches": 2})
    assert drawn == [3] and step.timings["rounds"] == 1  # dynamic sampling off: one round, nothing refilled
    assert [g.kept for g in step.groups] == [True] * 3
    assert len(step.minibatches) == 2  # 3 groups in 2 minibatches: [0, 1] and [2]
    advantages = group_advantages(torch.tensor([g.rewards for g in step.kept]))
    parts = [[0, 1], [2]]
    for (batch,), part in zip(step.minibatches, parts):  # one micro-batch each (rl.micro_batch_rows=0)
        learned = batch["targets"] != IGNORE
        lengths = [[len(c.token_ids) for c in step.kept[p].completions] for p in part]
        assert int(learned.sum()) == sum(map(sum, lengths))  # every sampled token, nothing else
        expected = sum(float(advantages[p, i]) * n for k, p in enumerate(part) for i, n in enumerate(lengths[k]))
        assert float(batch["advantages"][learned].sum()) == pytest.approx(expected, abs=1e-5)
        # token aggregation: each group's tokens weigh 1 / (prompts * its tokens), so the weights sum to 1
        assert float(batch["coef"][learned].sum()) == pytest.approx(1.0, abs=1e-6)
        assert float(batch["coef"][batch["segment_ids"] == 0].abs().sum()) == 0.0  # padding weighs nothing


def test_a_step_is_reproducible_and_reports_its_own_rewards(policy):
    first, _ = one_step(policy)
    again, _ = one_step(policy)
    assert [[c.token_ids for c in g.completions] for g in first.groups] == \
        [[c.token_ids for c in g.completions] for g in again.groups]
    per_kind, overall = step_metrics(first, pass_threshold=0.9)
    rewards = [r for g in first.groups for r in g.rewards]
    assert overall["reward/mean"] == pytest.approx(sum(rewards) / len(rewards))
    assert set(per_kind) == {f"{m}/{g.prompt.kind}" for g in first.groups
                             for m in ("reward", "pass_rate", "length", "think", "dropped")}
    assert all(v == 0.0 for k, v in per_kind.items() if k.startswith("dropped/"))
    texts = [c.text for g in first.groups for c in g.completions]
    assert overall["think/mean"] == pytest.approx(sum("<think>" in t for t in texts) / len(texts))
    assert trained_tokens(first) == sum(len(c.token_ids) for g in first.kept for c in g.completions) > 0


def test_dynamic_sampling_refills_from_the_stream(policy):
    """An untrained policy scores 0 on nearly every group: dynamic sampling drops those and draws refills, up to
    max_rounds rounds, and still trains on at least one group."""
    step, drawn = one_step(policy, dynamic_sampling=True, max_rounds=3)
    # the step's 3 prompts, then a refill after every round that left groups missing
    assert drawn[0] == 3 and len(drawn) == step.timings["rounds"] + (len(step.kept) < 3)
    dropped = [g for g in step.groups if not g.kept]
    assert all(max(g.rewards) == min(g.rewards) for g in dropped)
    assert 1 <= len(step.kept) <= 3 and len(step.minibatches) == 1


def test_the_engine_is_released_once_per_step_after_its_rollouts(policy):
    """rl_step hands the engine's memory back (vLLM's sleep mode on GPUs) once its rollouts are scored."""
    model, processor = policy
    events = []

    class Recording(HFRollout):
        def generate(self, *args):
            events.append("generate")
            return super().generate(*args)

        def release(self):
            events.append("release")

    config = RLConfig(group_size=2, prompts_per_step=2, max_new_tokens=4, dynamic_sampling=True, max_rounds=2)
    stream = prompt_stream()
    rl_step(None, Recording(model), RewardRouter(), lambda k: list(itertools.islice(stream, k)), config,
            processor, EasyPool(0.0, 8, 0), seed=3)
    assert events[-1] == "release" and events.count("release") == 1 and "generate" in events


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for CPU engines")
def test_vllm_sleep_mode_is_refused_on_a_cpu(tmp_path):
    from mimovl.errors import UsageError
    from mimovl.generate.engines import VLLMRollout

    with pytest.raises(UsageError, match="rollout.sleep=true needs a GPU"):
        VLLMRollout(tmp_path, sleep=True)
