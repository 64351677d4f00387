"""GRPO maths against hand-computed values, and the group selection of dynamic sampling and the easy pool."""

import math

import pytest
import torch

from mimovl.data.encode import IGNORE
from mimovl.errors import UsageError
from mimovl.rl.grpo import LossConfig, aggregation_coefs, group_advantages, policy_loss
from mimovl.rl.sampling import EasyPool, collect

SQRT_HALF = math.sqrt(0.5)


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]])
    # group 1: mean 1/2, sample std sqrt(1/3): +-(1/2)/sqrt(1/3) = +-sqrt(3)/2
    # group 2: all equal -> 0;  group 3: mean 1/4, sample std 1/2: (3/4)/(1/2) = 1.5, (-1/4)/(1/2) = -0.5
    expected = torch.tensor([[math.sqrt(3) / 2, -math.sqrt(3) / 2, math.sqrt(3) / 2, -math.sqrt(3) / 2],
                             [0.0, 0.0, 0.0, 0.0], [1.5, -0.5, -0.5, -0.5]])
    assert torch.allclose(group_advantages(rewards, std_eps=0.0 + 1e-12), expected, atol=1e-6)


# Two prompts. Prompt 0: two responses of 2 and 1 tokens, rewards (1, 0) -> A = (+sqrt(1/2), -sqrt(1/2)).
# Prompt 1: three responses of 1, 2 and 1 tokens, rewards (1, 0, 0) -> mean 1/3, sample std 1/sqrt(3),
# A = (2/sqrt(3), -1/sqrt(3), -1/sqrt(3)).
LENGTHS = [[2, 1], [1, 2, 1]]
REWARDS = [[1.0, 0.0], [1.0, 0.0, 0.0]]
LOGP = [[[-1.0, -2.0], [-0.5]], [[-0.25], [-1.5, -0.75], [-3.0]]]  # log pi of each token


def _flat(aggregation: str):
    advantages = [group_advantages(torch.tensor([r]), 1e-12)[0].tolist() for r in REWARDS]
    coefs = aggregation_coefs(LENGTHS, aggregation)
    logp, adv, coef = [], [], []
    for p, group in enumerate(LOGP):
        for i, tokens in enumerate(group):
            logp += tokens
            adv += [advantages[p][i]] * len(tokens)
            coef += [coefs[p][i]] * len(tokens)
    return torch.tensor(logp, requires_grad=True), torch.tensor(adv), torch.tensor(coef)


def test_token_level_loss_and_gradient_equal_the_report_by_hand():
    logp, adv, coef = _flat("token")
    loss, _ = policy_loss(logp, adv, coef, LossConfig())
    a, b = 2 / math.sqrt(3), -1 / math.sqrt(3)
    # J = mean over prompts of (sum_i A_i * sum_j log pi_ij) / (tokens of the group); loss = -J
    prompt0 = (SQRT_HALF * (-1.0 - 2.0) - SQRT_HALF * (-0.5)) / 3
    prompt1 = (a * (-0.25) + b * (-1.5 - 0.75) + b * (-3.0)) / 4
    assert loss.item() == pytest.approx(-(prompt0 + prompt1) / 2, abs=1e-6)
    loss.backward()
    # d loss / d log pi_ij = -A_i / (P * tokens of the group)
    expected = [-SQRT_HALF / 6, -SQRT_HALF / 6, SQRT_HALF / 6, -a / 8, -b / 8, -b / 8, -b / 8]
    assert logp.grad.tolist() == pytest.approx(expected, abs=1e-6)


def test_sequence_mean_aggregation_by_hand():
    logp, adv, coef = _flat("sequence")
    loss, _ = policy_loss(logp, adv, coef, LossConfig(aggregation="sequence"))
    a, b = 2 / math.sqrt(3), -1 / math.sqrt(3)
    prompt0 = (SQRT_HALF * (-1.5) - SQRT_HALF * (-0.5)) / 2            # per-response means, then their mean
    prompt1 = (a * (-0.25) + b * (-1.125) + b * (-3.0)) / 3
    assert loss.item() == pytest.approx(-(prompt0 + prompt1) / 2, abs=1e-6)


def test_clipped_ratio_and_k3_kl_by_hand():
    logp = torch.log(torch.tensor([0.5, 0.5], requires_grad=False)).requires_grad_()
    old = torch.log(torch.tensor([0.25, 0.75]))   # ratios 2 and 2/3
    ref = torch.log(torch.tensor([0.25, 0.25]))
    adv, coef = torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.5])
    config = LossConfig(clip_low=0.2, clip_high=0.28, kl_coef=0.1)
    loss, stats = policy_loss(logp, adv, coef, config, old_logp=old, ref_logp=ref)
    # token 1: min(2 * 1, 1.28 * 1) = 1.28; token 2: min(2/3 * -1, 0.8 * -1) = -0.8
    surrogate = 0.5 * 1.28 + 0.5 * -0.8
    # k3 with delta = log(ref / pi) = log(1/2): 1/2 - log(1/2) - 1, for both tokens
    kl = 0.5 - math.log(0.5) - 1.0
    assert loss.item() == pytest.approx(-surrogate + 0.1 * kl, abs=1e-6)
    assert stats["kl"] == pytest.approx(kl, abs=1e-6)
    assert stats["clipped"] == 1.0


def test_ratio_form_at_the_sampling_policy_has_the_same_gradient():
    """With old_logp = logp (the first update of a rollout) the ratio is 1: the value is -sum(coef * A), the
    gradient the report's -coef * A."""
    logp = torch.tensor([-1.0, -2.0, -0.1], requires_grad=True)
    adv, coef = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.1, 0.2, 0.3])
    loss, _ = policy_loss(logp, adv, coef, LossConfig(), old_logp=logp.detach())
    loss.backward()
    assert loss.item() == pytest.approx(-(0.05 - 0.2 + 0.6))
    assert logp.grad.tolist() == pytest.approx([-0.05, 0.2, -0.6])


def test_loss_config_rejects_half_a_clip_and_unknown_aggregation():
    with pytest.raises(UsageError, match="together"):
        LossConfig(clip_low=0.2)
    with pytest.raises(UsageError, match="aggregation"):
        LossConfig(aggregation="mean")


# ---- dynamic sampling ----

# A scripted round: each prompt is an int; its group's rewards are looked up, so which groups have zero
# variance is known exactly.
GROUP_REWARDS = {0: [1, 0], 1: [0, 0], 2: [1, 1], 3: [0, 1], 4: [0, 0], 5: [1, 0], 6: [0.5, 0.25], 7: [1, 1]}


def _rollout(prompts):
    return [[f"response {p}"] * 2 for p in prompts], [[float(r) for r in GROUP_REWARDS[p]] for p in prompts]


def test_dynamic_sampling_drops_exactly_the_zero_variance_groups_and_refills():
    stream = iter(range(4, 8))
    result = collect([0, 1, 2, 3], _rollout, lambda k: [next(stream) for _ in range(k)], need=4, max_rounds=4)
    # round 1: 0 and 3 kept, 1 and 2 dropped; draws 2 -> 4 dropped, 5 kept; draws 1 -> 6 kept
    assert [p for p, _, _ in result.kept] == [0, 3, 5, 6]
    assert [p for p, _, _ in result.dropped] == [1, 2, 4]
    assert result.rounds == 3


def test_without_dynamic_sampling_every_group_is_kept_in_one_round():
    result = collect([0, 1, 2, 3], _rollout, lambda k: [], need=4, max_rounds=4, dynamic=False)
    assert [p for p, _, _ in result.kept] == [0, 1, 2, 3] and result.rounds == 1


def test_a_batch_with_no_signal_keeps_one_group_after_max_rounds():
    result = collect([1, 2], _rollout, lambda k: [4] * k, need=2, max_rounds=3)
    assert result.rounds == 3 and [p for p, _, _ in result.kept] == [1]


def test_solved_prompts_enter_the_easy_pool_and_come_back_at_its_rate():
    pool = EasyPool(probability=0.1, seed=0)
    collect([2, 7, 0], _rollout, lambda k: [], need=1, max_rounds=1, pool=pool, pass_threshold=1.0)
    assert pool.prompts == [2, 7]  # every response passed
    mixed = [p for _ in range(2000) for p in pool.mix([100])]
    share = sum(p != 100 for p in mixed) / len(mixed)
    assert share == pytest.approx(0.1, abs=0.02)


def test_easy_pool_state_round_trips_its_prompts_pixels_and_random_state(make_image):
    from mimovl.generate.prompts import Prompt

    pool = EasyPool(probability=0.5, capacity=4, seed=3)
    for i in range(3):
        pool.add(Prompt(f"k{i}", "counting", i, {"images": [make_image(seed=i)], "messages": []}))
    restored = EasyPool(probability=0.5, capacity=4, seed=99)
    restored.load_state_dict(pool.state_dict())
    assert [p.key for p in restored.prompts] == ["k0", "k1", "k2"]
    assert all(torch.equal(torch.tensor(list(a.sample["images"][0].getdata())),
                           torch.tensor(list(b.sample["images"][0].getdata())))
               for a, b in zip(pool.prompts, restored.prompts))
    slots = list(range(20))
    assert [getattr(p, "key", p) for p in pool.mix(slots)] == [getattr(p, "key", p) for p in restored.mix(slots)]


@pytest.mark.parametrize("share_prompt", [False, True])
def test_micro_batched_updates_equal_the_whole_batch_update(make_image, share_prompt):
    """rl.micro_batch_rows=1 (one packed row through the model at a time, gradients accumulated) leaves the
    parameters the whole-update forward leaves, after one optimizer step (SGD: the update is the gradient)."""
    from test_attention import _groups

    from mimovl.model.build import build_tiny
    from mimovl.model.packed import PackedVLM
    from mimovl.rl.batch import rollout_batches
    from mimovl.stages.grpo import accumulate, aligned

    params = []
    for rows in (0, 1):
        model, processor = build_tiny(seed=0)
        model.train()
        net = PackedVLM(model, logits_chunk=16)
        prompts, groups = _groups(make_image)
        advantages = group_advantages(torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.9, 0.1]]))
        batches = rollout_batches(prompts, groups, advantages, processor, seq_len=160, share_prompt=share_prompt,
                                  micro_batch_rows=rows)
        assert (len(batches) >= 2) == bool(rows)
        batches = aligned(batches, lambda n: n + 1)  # as a rank with one micro-batch fewer than another would
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        n = len(batches)
        loss, stats = accumulate(lambda b: -net(b, b["targets"] != IGNORE, losses=True), batches, LossConfig(),
                                 [None] * n, [None] * n, lambda value: value.backward())
        optimizer.step()
        params.append(({k: v.detach().clone() for k, v in model.named_parameters()}, loss))
    (whole, whole_loss), (micro, micro_loss) = params
    assert micro_loss == pytest.approx(whole_loss, abs=1e-6)
    for name, value in whole.items():
        torch.testing.assert_close(micro[name], value, atol=1e-6, rtol=0, msg=name)
