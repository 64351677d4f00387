"""Rewards at batch speed: a whole batch scored in one call equals per-call scoring, its math checks run in a pool
of long-lived workers, a check that hangs math-verify scores 0 at its deadline and the pool keeps serving."""

import multiprocessing
import operator
import sys
import time
import types
from types import SimpleNamespace

import pytest

from mimovl.rewards import REWARDS, safe_reward, safe_rewards
from mimovl.rewards.mathverify import CHECKS, TIMEOUT_S, _equal, math_rewards
from mimovl.rewards.pool import CheckPool, entry_imports
from mimovl.rewards.router import RewardRouter
from test_rewards import CASES

# Passes math's cheap filter (the brace before the parenthesis hides the power tower from it) and hangs math-verify
# in big-integer arithmetic that its own signal.alarm timeouts cannot interrupt.
HANGS = "\\boxed{\\gcd(10^{(10^{10})}, 6)}"
SLACK_S = 5.0  # killing a worker past its deadline, starting and warming its replacement, on a loaded machine


def _mixed_batch(n: int = 256) -> list[tuple[str, str, object, float]]:
    """(task, response, answer, expected): every case of test_rewards (math among them), then math checks."""
    batch = list(CASES)
    for i in range(n - len(batch)):
        right = i % 3 != 0  # a third wrong
        batch.append(("math", f"<think>so</think>\\boxed{{{i}/4}}", str(i / 4 if right else i / 4 + 1), float(right)))
    return batch


def test_a_batch_of_256_equals_per_call_scoring():
    batch = _mixed_batch()
    assert len(batch) == 256 and sum(task == "math" for task, *_ in batch) > 150
    tasks, responses, answers, expected = map(list, zip(*batch))
    start = time.perf_counter()
    together = safe_rewards(tasks, responses, answers)
    assert time.perf_counter() - start < 60
    one_by_one = [safe_reward(t, r, a) for t, r, a in zip(tasks, responses, answers)]
    assert together == one_by_one
    assert together == pytest.approx(expected, abs=1e-12)
    assert all(type(v) is float for v in together)


def test_the_router_scores_the_batch_in_one_call_as_per_call():
    batch = _mixed_batch()
    prompts, groups = [], []
    for task, response, answer, _ in batch:  # one prompt per (task, answer), its responses a group
        if prompts and (prompts[-1].task, prompts[-1].answer) == (task, answer):
            groups[-1].append(response)
        else:
            prompts.append(SimpleNamespace(task=task, answer=answer, sample={}, modality="text"))
            groups.append([response])
    rewards = RewardRouter().score(prompts, groups)
    assert rewards == [[REWARDS[p.task](r, p.answer) for r in g] for p, g in zip(prompts, groups)]
    assert sum(rewards, []) == pytest.approx([expected for *_, expected in batch], abs=1e-12)


def test_a_hanging_check_scores_0_at_its_deadline_and_the_pool_keeps_serving():
    assert math_rewards(["\\boxed{17}"], ["17"]) == [1.0]  # the workers are up
    # it hangs: with twice the deadline it still has not finished
    start = time.perf_counter()
    assert CHECKS.run(_equal, [("\\boxed{2}", HANGS)], timeout_s=2 * TIMEOUT_S) == [False]
    assert time.perf_counter() - start >= 2 * TIMEOUT_S
    # as many as there are workers, so that every worker is killed; then a normal response, in the same batch
    responses = [HANGS] * CHECKS.workers + ["<think>half</think>\\boxed{0.5}"]
    start = time.perf_counter()
    assert math_rewards(responses, ["2"] * CHECKS.workers + ["\\frac{1}{2}"]) == [0.0] * CHECKS.workers + [1.0]
    assert time.perf_counter() - start < TIMEOUT_S + SLACK_S
    start = time.perf_counter()
    assert REWARDS["math"]("\\boxed{17}", "17") == 1.0 and REWARDS["math"]("\\boxed{18}", "17") == 0.0
    assert time.perf_counter() - start < 1.0  # replaced workers are warm


def test_a_pool_starts_early_checks_in_order_and_closes():
    others = set(multiprocessing.active_children())  # CHECKS' workers, when another test started them
    pool = CheckPool(workers=2)
    start = time.perf_counter()
    pool.start()  # in the background: the forkserver imports math-verify, then the workers start
    assert time.perf_counter() - start < 2.0  # (a first answer takes 2-3 s here)
    assert pool.run(operator.eq, [(1, 1), (1, 2), (3, 3)], timeout_s=5) == [True, False, True]
    assert pool.run(operator.truediv, [(1, 0), (1, 2)], timeout_s=5) == [False, True]  # raised: False
    start = time.perf_counter()
    assert pool.run(time.sleep, [(30,), (0,)], timeout_s=0.5) == [False, False]  # killed; None is not True
    assert time.perf_counter() - start < 0.5 + SLACK_S
    assert pool.run(operator.eq, [(2, 2)], timeout_s=5) == [True]
    workers = [p for p in set(multiprocessing.active_children()) - others if p.name == "pebble_pool_worker"]
    assert workers  # (a replacement may still be starting)
    pool.close()
    assert all(not p.is_alive() for p in workers)
    assert pool.run(operator.eq, [(4, 4)], timeout_s=5) == [True]  # started again
    pool.close()



def test_the_forkserver_preloads_what_the_entry_script_imported(monkeypatch):
    """Workers re-run the entry script; with its imports preloaded in the forkserver, that costs them nothing."""
    script = types.ModuleType("__main__")
    exec("import json\nfrom pathlib import Path\nfrom operator import eq\ndef main(): pass\nN = 3", vars(script))
    monkeypatch.setitem(sys.modules, "__main__", script)
    assert entry_imports() == ["_operator", "json", "pathlib"]  # operator.eq is _operator's; main, N: no module
