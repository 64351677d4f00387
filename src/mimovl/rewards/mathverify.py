"""Math and free-form answers, checked with math-verify (as in the MiMo-VL report): 1.0 if equal, else 0.0.

Accepts any final answer: the content of its last `\\boxed{...}` is checked if there is one, else the answer
text itself (its last MAX_MATH_CHARS characters), so "0.5", "$\\frac{1}{2}$", "The answer is \\boxed{1/2}"
all match the gold "\\frac{1}{2}". The gold is a string (LaTeX allowed; read as if boxed unless it already
holds `$` or `\\boxed`).

Bounded time, from any thread: text math-verify would choke on scores 0 at once (over MAX_MATH_CHARS
characters, a run of more than MAX_DIGITS digits, brackets nested deeper than MAX_DEPTH, a numeric power tower
such as 10**10**10, an exponent of 5+ digits, a factorial of a factorial or of a 5+ digit number). The rest
runs in CHECKS, a pool of long-lived worker processes (mimovl.rewards.pool), each check killed after TIMEOUT_S
seconds: math-verify's own signal.alarm timeouts raise ValueError off the main thread, and even on it they
cannot interrupt big-integer arithmetic (seen: `\\gcd(10^{10^{10}}, 6)` and `\\gcd(10^{(10^{10})}, 6)`, which
passes the filter, never returned).

    math_rewards(["\\boxed{17}", "0.5"], ["17", "\\frac{1}{2}"])   # [1.0, 1.0]: one batch, WORKERS checks at a time
"""

from __future__ import annotations

import logging
import re

from mimovl.rewards.guard import guarded
from mimovl.rewards.parse import final_answer, last_boxed
from mimovl.rewards.pool import CheckPool

log = logging.getLogger(__name__)

MAX_MATH_CHARS = 512
MAX_DIGITS = 40
MAX_DEPTH = 12
TIMEOUT_S = 3.0  # the whole check, in a worker of CHECKS

_POWER = r"(?:\^|\*\*)"
_HUGE = re.compile(
    rf"{_POWER}\s*[{{(]?\s*[-+]?\s*\d{{5,}}"  # an exponent of 5+ digits: 2^{99999}
    rf"|{_POWER}\s*[{{(]?\s*[-+]?\s*\d+(?:\.\d+)?\s*{_POWER}"  # a power in an exponent: 10^10^10, 10**(10**10)
    r"|\d{5,}\s*!|!\s*!"  # the factorial of a 5+ digit number, or of a factorial: 99999!, 9!!
)
_LONG_NUMBER = re.compile(rf"\d{{{MAX_DIGITS + 1}}}")


@guarded
def math_reward(response: str, answer) -> float:
    """1.0 if the final answer of `response` equals the gold `answer` (a string, LaTeX allowed) per
    math-verify, else 0.0."""
    return math_rewards([response], [answer])[0]


def math_rewards(responses: list[str], answers: list) -> list[float]:
    """math_reward of each (response, answer), the checks of the batch run in parallel in CHECKS."""
    pairs = [_pair(response, answer) for response, answer in zip(responses, answers, strict=True)]
    checked = iter(CHECKS.run(_equal, [p for p in pairs if p is not None], timeout_s=TIMEOUT_S))
    return [0.0 if p is None else float(next(checked)) for p in pairs]


def _pair(response, answer) -> tuple[str, str] | None:
    """(gold, prediction) as math-verify is given them, or None when the response scores 0 unchecked."""
    try:
        text = final_answer(response)
        if text is None:
            return None
        boxed = last_boxed(text)
        pred = text[-MAX_MATH_CHARS:] if boxed is None else boxed
        if not pred.strip() or not _tame(pred):
            return None
        gold = str(answer)
    except Exception:
        log.debug("math: reading the response raised, reward 0", exc_info=True)
        return None
    if boxed is not None:
        pred = "\\boxed{" + pred + "}"
    if "$" not in gold and "\\boxed" not in gold:
        gold = "\\boxed{" + gold + "}"
    return gold, pred


def _equal(gold: str, pred: str) -> bool:
    """math-verify's verdict, without its own signal.alarm timeouts: the worker's deadline (TIMEOUT_S) bounds the
    check, and those 1 s alarms added only zeros for right answers on a busy machine (seen: 1 in 64 at load 7)."""
    from math_verify import parse, verify  # here: importing math-verify (and sympy) takes seconds

    gold_parsed = parse(gold, parsing_timeout=None)
    pred_parsed = parse(pred, parsing_timeout=None)
    return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _tame(text: str) -> bool:
    """False for text math-verify should not be given (see the module docstring)."""
    if len(text) > MAX_MATH_CHARS or _LONG_NUMBER.search(text) or _HUGE.search(text):
        return False
    depth = 0
    for char in text:
        if char in "{([":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif char in "})]":
            depth = max(depth - 1, 0)
    return True


def _warm() -> None:
    """Runs a few checks, once in each worker as it starts (~0.5 s), so that math-verify's parsers and caches
    and sympy's lazily imported simplifiers are built before the first real check: then one costs ~5 ms."""
    for gold, pred in [("1", "1"), ("x^2+1", "3"), ("\\{1,2\\}", "(1,2)"), ("x>1", "x=1")]:
        _equal("\\boxed{" + gold + "}", "\\boxed{" + pred + "}")


CHECKS = CheckPool(warm=_warm)
