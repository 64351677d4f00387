"""Rule rewards of one RL batch: a forked child per math check (as before) against one call for the whole batch,
its math checks in the pool of long-lived workers (`mimovl.rewards.safe_rewards`), in one process.

    python benchmarks/rewards.py                      # 64 responses, 48 of them math, 3 rounds
    python benchmarks/rewards.py --responses 256 --hold-gib 8

Both score the same batch and must agree. "Before" is the earlier math path: math-verify warmed in this process,
then `guard.bounded` (a fork, killed after TIMEOUT_S) per check; the other tasks run in process either way.
A fork costs more the more memory the process maps (a trainer with a vLLM engine maps tens of GiB):
--hold-gib maps and touches that much first. Also prints what starting the pool costs: `start_checks()`
(the forkserver importing math-verify) and the first answer (workers started and warm). Medians of --rounds.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mimovl.rewards import safe_reward, safe_rewards, start_checks  # noqa: E402
from mimovl.rewards.guard import bounded  # noqa: E402
from mimovl.rewards.mathverify import CHECKS, TIMEOUT_S, _equal, _pair, _warm  # noqa: E402

MATH = [  # (response, gold): right and wrong, boxed and bare, as a policy writes them
    ("<think>Half of it.</think>The answer is \\boxed{\\frac{1}{2}}.", "0.5"),
    ("<think>sqrt 12</think>\\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
    ("<think>expand</think>$x^2+2x+1$", "(x+1)^2"),
    ("<think>20 + 14</think>34", "34"),
    ("<think>guess</think>\\boxed{35}", "34"),
    ("<think>the set</think>\\boxed{\\{1, 2, 3\\}}", "\\{3, 2, 1\\}"),
    ("<think>interval</think>\\boxed{(0, 1]}", "(0,1]"),
    ("<think>pi</think>\\boxed{\\frac{\\pi}{4}}", "\\pi/4"),
]
OTHER = [  # (task, response, answer)
    ("counting", "<think>1, 2, 3</think>There are 3 circles.", 3),
    ("multiple_choice", "<think>not A</think>The answer is (C).", "C"),
    ("grounding_box", '<think>there</think>{"bbox_2d": [12, 12, 52, 52]}', [10, 10, 50, 50]),
    ("temporal_grounding", "<think>then</think>[00:02, 00:06]", [4, 8]),
]


def batch(responses: int, math_share: float) -> tuple[list, list, list]:
    n_math = round(responses * math_share)
    items = [("math", *MATH[i % len(MATH)]) for i in range(n_math)]
    items += [OTHER[i % len(OTHER)] for i in range(responses - n_math)]
    tasks, texts, answers = map(list, zip(*items))
    return tasks, texts, answers


def forked(tasks: list, texts: list, answers: list) -> list[float]:
    """The earlier path: a fork per math check; the rest in process."""
    rewards = []
    for task, text, answer in zip(tasks, texts, answers):
        if task != "math":
            rewards.append(safe_reward(task, text, answer))
            continue
        pair = _pair(text, answer)
        rewards.append(0.0 if pair is None else float(bounded(_equal, *pair, timeout_s=TIMEOUT_S)))
    return rewards


def median_seconds(fn, rounds: int) -> tuple[float, list]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--responses", type=int, default=64)
    parser.add_argument("--math-share", type=float, default=0.75)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hold-gib", type=float, default=0.0, help="memory this process maps and touches first")
    args = parser.parse_args()
    held = bytearray(int(args.hold_gib * 2**30))  # bytearray zero-fills: every page is touched
    tasks, texts, answers = batch(args.responses, args.math_share)

    start = time.perf_counter()
    start_checks()
    started = time.perf_counter() - start
    safe_rewards(["math"], ["1"], ["1"])
    first = time.perf_counter() - start
    _warm()  # the earlier path warmed math-verify in this process before its first fork
    forked(tasks, texts, answers), safe_rewards(tasks, texts, answers)  # warm-up: lazy imports (torchvision's box ops)
    before, expected = median_seconds(lambda: forked(tasks, texts, answers), args.rounds)
    after, got = median_seconds(lambda: safe_rewards(tasks, texts, answers), args.rounds)
    assert got == expected, (got, expected)

    print(f"{args.responses} responses ({tasks.count('math')} math), {CHECKS.workers} workers, "
          f"{len(held) / 2**30:.0f} GiB held, medians of {args.rounds} rounds; mean reward {sum(got) / len(got):.3f}")
    print(f"  before, a fork per math check: {before:.3f} s ({1000 * before / args.responses:.1f} ms a response)")
    print(f"  after, one batch in the pool:  {after:.3f} s ({1000 * after / args.responses:.1f} ms a response)")
    print(f"  ratio before / after: {before / after:.1f}x")
    print(f"  starting the pool: start_checks() {started:.2f} s, first answer {first:.2f} s")
    CHECKS.close()


if __name__ == "__main__":
    main()
