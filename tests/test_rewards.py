"""The rule-based rewards: exact values per task, malformed and adversarial output, time bounds, threads,
and agreement with the synthetic data's own targets."""

import signal
import threading
import time

import math_verify
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from mimovl.data.synthetic import make_sample
from mimovl.rewards import REWARDS, SIZED_TASKS, TASKS, safe_reward
from mimovl.rewards.guard import bounded

BOUND_S = 5.0  # every call, however adversarial its input, returns within this

CASES = [
    # (task, response, answer, expected)
    ("math", "0.5", "\\frac{1}{2}", 1.0),
    ("math", "\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("math", "<think>20 + 14 = 34.</think>34", "34", 1.0),
    ("math", "The answer is \\boxed{17}.", "17", 1.0),
    ("math", "$x^2+1$", "1+x^2", 1.0),
    ("math", "\\boxed{2\\sqrt{3}}", "\\sqrt{12}", 1.0),
    ("math", "\\boxed{17}", 17, 1.0),
    ("math", "\\boxed{18}", "17", 0.0),
    ("math", "\\boxed{17} or rather \\boxed{18}", "17", 0.0),
    ("math", "hello there", "17", 0.0),
    ("math", "", "17", 0.0),
    ("math", "<think>17", "17", 0.0),
    ("math", "<think>a</think>17<think>more", "17", 0.0),
    ("math", "10**10**10", "17", 0.0),
    ("math", "\\boxed{10^{10^{10}}}", "17", 0.0),
    ("math", "\\boxed{\\gcd(10^{10^{10}}, 6)}", "2", 0.0),
    ("math", "9" * 5000, "17", 0.0),
    ("math", "\\boxed{" + "\\frac{1}{" * 30 + "2" + "}" * 31, "17", 0.0),
    ("math", "\\boxed{9!!}", "17", 0.0),
    ("multiple_choice", "B", "B", 1.0),
    ("multiple_choice", "(B)", "B", 1.0),
    ("multiple_choice", "B.", "B", 1.0),
    ("multiple_choice", "b", "B", 1.0),
    ("multiple_choice", "C", "(c)", 1.0),
    ("multiple_choice", "The answer is B", "B", 1.0),
    ("multiple_choice", "The answer is A.", "A", 1.0),
    ("multiple_choice", "<think>A or B?</think>\\boxed{B}", "B", 1.0),
    ("multiple_choice", "\\boxed{\\text{(B)}}", "B", 1.0),
    ("multiple_choice", "B or C", "C", 1.0),
    ("multiple_choice", "B or C", "B", 0.0),
    ("multiple_choice", "C, I think", "C", 1.0),
    ("multiple_choice", "A good choice is D", "D", 1.0),
    ("multiple_choice", "C", "B", 0.0),
    ("multiple_choice", "none of them", "B", 0.0),
    ("multiple_choice", "<think>B</think>", "B", 0.0),
    ("multiple_choice", "B", "not a letter", 0.0),
    ("counting", "3", 3, 1.0),
    ("counting", "<think>1 + 2 = 3.</think>3", 3, 1.0),
    ("counting", "There are 3 red circles.", 3, 1.0),
    ("counting", "Three.", 3, 1.0),
    ("counting", "twenty", 20, 1.0),
    ("counting", "I count 2, no, 3", 3, 1.0),
    ("counting", "3", "3", 1.0),
    ("counting", "4", 3, 0.0),
    ("counting", "3.5", 3, 0.0),
    ("counting", "-3", 3, 0.0),
    ("counting", "3 circles, one is red", 3, 0.0),
    ("counting", "", 3, 0.0),
    ("counting", "<think>3", 3, 0.0),
    ("counting", "9" * 5000, 3, 0.0),
    ("grounding_box", "[5, 5, 15, 15]", [5, 5, 15, 15], 1.0),
    ("grounding_box", '{"bbox_2d": [5.0, 5.0, 15.0, 15.0]}', [5, 5, 15, 15], 1.0),
    ("grounding_box", "<think>first [0, 0, 1, 1]</think>then [5, 5, 15, 15]", [5, 5, 15, 15], 1.0),
    # The reward is r = (1 + GIoU) / 2 * min(A_pred, A_gold) / max(A_pred, A_gold), with
    # GIoU = IoU - (enclosing - union) / enclosing. Equal areas: r = (1 + GIoU) / 2. Containment: GIoU = IoU and
    # the size ratio = IoU, so r = IoU * (1 + IoU) / 2. Disjoint boxes of one area A: r = A / enclosing.
    # overlap: IoU 25/175, enclosing 225: GIoU = 1/7 - 50/225 = -5/63, r = (58/63) / 2
    ("grounding_box", "[0, 0, 10, 10]", [5, 5, 15, 15], 29 / 63),
    # overlap: intersection 8x6 = 48, union 152, enclosing 12x14 = 168: GIoU = 6/19 - 16/168 = 88/399,
    # r = (487/399) / 2
    ("grounding_box", "[0, 0, 10, 10]", [2, 4, 12, 14], 487 / 798),
    # overlap, enclosing = union 150: GIoU = IoU = 50/150, r = (4/3) / 2
    ("grounding_box", "[0, 0, 10, 10]", [5, 0, 15, 10], 2 / 3),
    # a near miss: intersection 38x38 = 1444, union 1756, enclosing 42x42 = 1764:
    # GIoU = 361/439 - 2/441 = 158323/193599, r = (193599 + 158323) / (2 * 193599)
    ("grounding_box", "[12, 12, 52, 52]", [10, 10, 50, 50], 175961 / 193599),
    # containing: IoU 100/400 = 1/4, r = 1/4 * 5/4 / 2
    ("grounding_box", "[0, 0, 20, 20]", [5, 5, 15, 15], 5 / 32),
    # containing, the gamed box: IoU = 1600 / 200000^2 = 1/25e6 (no image size: nothing to clip to),
    # r = IoU * (1 + IoU) / 2 = (25e6 + 1) / (2 * 25e6^2), about 2e-8
    ("grounding_box", "[-100000, -100000, 100000, 100000]", [10, 10, 50, 50], 25_000_001 / 1_250_000_000_000_000),
    # zero area: 0 (it was (GIoU + 1) / 2 = 1/2)
    ("grounding_box", "[10, 10, 10, 10]", [10, 10, 50, 50], 0.0),
    ("grounding_box", "[30, 10, 30, 50]", [10, 10, 50, 50], 0.0),
    # disjoint, same size, ranked by distance: touching GIoU 0, r 1/2; 10 apart GIoU -1/3, r 1/3 (100/300);
    # corner contact GIoU -1/2, r 1/4 (100/400)
    ("grounding_box", "[0, 0, 10, 10]", [10, 0, 20, 10], 1 / 2),
    ("grounding_box", "[0, 0, 10, 10]", [20, 0, 30, 10], 1 / 3),
    ("grounding_box", "[-5, -5, 5, 5]", [5, 5, 15, 15], 1 / 4),
    # 10 apart from the 40x40 gold box: enclosing 90x40, r = 1600/3600; 950 apart (diagonally): 1600/1030^2
    ("grounding_box", "[60, 10, 100, 50]", [10, 10, 50, 50], 4 / 9),
    ("grounding_box", "[1000, 1000, 1040, 1040]", [10, 10, 50, 50], 16 / 10609),
    # a huge box far away: union 4e6 + 1600, enclosing 2990^2 = 8940100, (1 + GIoU) / 2 = 4001600 / 17880200
    # = 20008/89401, times the size ratio 1600/4e6 = 1/2500: 20008/223502500
    ("grounding_box", "[1000, 1000, 3000, 3000]", [10, 10, 50, 50], 5002 / 55875625),
    # without an image size, coordinates are taken as given: contains, IoU 1600/6400 = 1/4, r = 5/32
    ("grounding_box", "[60, 40, 140, 120]", [60, 40, 100, 80], 5 / 32),
    ("grounding_box", "[15, 15, 5, 5]", [5, 5, 15, 15], 0.0),
    ("grounding_box", "[5, 5, 15, 15]", [15, 15, 5, 5], 0.0),
    ("grounding_box", "[a, b, c, d]", [5, 5, 15, 15], 0.0),
    ("grounding_box", "[5, 5, 15]", [5, 5, 15, 15], 0.0),
    ("grounding_box", "[0, 0, 200000, 200000]", [5, 5, 15, 15], 0.0),
    ("grounding_box", "[0, 0, " + "9" * 5000 + ", 10]", [5, 5, 15, 15], 0.0),
    ("grounding_box", "[5, 5, 5, 5]", [5, 5, 5, 5], 0.0),  # two empty boxes (GIoU would be NaN)
    ("grounding_box", "<think>[5, 5, 15, 15]", [5, 5, 15, 15], 0.0),
    ("grounding_point", '{"action": "click", "point": [24, 26]}', [1, 17, 47, 35], 1.0),
    ("grounding_point", "click(24.5, 26.5)", [1, 17, 47, 35], 1.0),
    ("grounding_point", "[1, 17]", [1, 17, 47, 35], 1.0),
    ("grounding_point", "(47, 35)", [1, 17, 47, 35], 1.0),
    ("grounding_point", "[48, 26]", [1, 17, 47, 35], 0.0),
    ("grounding_point", "[0, 26]", [1, 17, 47, 35], 0.0),
    ("grounding_point", "[1, 17, 47, 35]", [1, 17, 47, 35], 0.0),
    ("grounding_point", "[24, 26]", [47, 35, 1, 17], 0.0),
    ("grounding_point", "[x, y]", [1, 17, 47, 35], 0.0),
    ("temporal_grounding", "[00:02,00:05]", [2, 5], 1.0),
    ("temporal_grounding", "[0:02, 00:05]", [2, 5], 1.0),
    ("temporal_grounding", "[00:00:02,00:00:05]", [2, 5], 1.0),
    ("temporal_grounding", "<think>[00:00,00:01]</think>[01:00, 01:30]", [60, 90], 1.0),
    ("temporal_grounding", "[00:02,00:06]", [4, 8], 2 / 6),
    ("temporal_grounding", "[00:00,00:10]", [2, 5], 3 / 10),
    ("temporal_grounding", "[00:02.5,00:05]", [2, 5], 2.5 / 3),
    ("temporal_grounding", "[00:06,00:08]", [2, 5], 0.0),
    ("temporal_grounding", "[00:02,00:75]", [2, 5], 0.0),
    ("temporal_grounding", "[00:60,01:00]", [2, 5], 0.0),
    ("temporal_grounding", "[00:60:00,01:00:00]", [2, 5], 0.0),
    ("temporal_grounding", "[00:05,00:02]", [2, 5], 0.0),
    ("temporal_grounding", "[00:02,00:05]", [5, 2], 0.0),
    ("temporal_grounding", "[2, 5]", [2, 5], 0.0),
    ("temporal_grounding", "from 2 to 5 seconds", [2, 5], 0.0),
    ("temporal_grounding", "<think>[00:02,00:05]", [2, 5], 0.0),
]


def _case_id(case) -> str:
    task, response, answer, expected = case
    return f"{task}:{response[:40]!r}->{expected:.4g}"


@pytest.mark.parametrize("task,response,answer,expected", CASES, ids=[_case_id(c) for c in CASES])
def test_reward(task, response, answer, expected):
    start = time.perf_counter()
    value = REWARDS[task](response, answer)
    assert time.perf_counter() - start < BOUND_S
    assert type(value) is float
    assert value == pytest.approx(expected, abs=1e-12)


# (task, response, answer, image (width, height), expected): boxes clipped to the image, points off it 0
SIZED_CASES = [
    # the gamed box, clipped, is the whole 100x80 image: it contains the gold box, IoU = 1600/8000 = 1/5,
    # r = IoU * (1 + IoU) / 2 = 1/5 * 6/5 / 2
    ("grounding_box", "[-100000, -100000, 100000, 100000]", [10, 10, 50, 50], (100, 80), 3 / 25),
    ("grounding_box", "[0, 0, 100, 80]", [10, 10, 50, 50], (100, 80), 3 / 25),
    ("grounding_box", "[10, 10, 10, 10]", [10, 10, 50, 50], (100, 80), 0.0),
    ("grounding_box", "[12, 12, 52, 52]", [10, 10, 50, 50], (100, 80), 175961 / 193599),  # inside: unchanged
    # clipped to [0, 0, 50, 50]: contains the gold box, IoU 1600/2500 = 16/25 (unclipped 1600/3600),
    # r = 16/25 * 41/25 / 2
    ("grounding_box", "[-10, -10, 50, 50]", [10, 10, 50, 50], (100, 80), 328 / 625),
    # off the image: clipped to the zero-area [100, 10, 100, 50]
    ("grounding_box", "[120, 10, 150, 50]", [10, 10, 50, 50], (100, 80), 0.0),
    ("grounding_box", "[120, 10, 150, 50]", [120, 10, 150, 50], (100, 80), 0.0),  # a gold box off the image
    # past the image's corner: clipped to [60, 40, 100, 80], the gold box (1/4 unclipped, above)
    ("grounding_box", "[60, 40, 140, 120]", [60, 40, 100, 80], (100, 80), 1.0),
    # a gold box partly off the image is clipped too: [90, 70, 100, 80]
    ("grounding_box", "[90, 70, 100, 80]", [90, 70, 110, 90], (100, 80), 1.0),
    ("grounding_box", "[5, 5, 15, 15]", [5, 5, 15, 15], (0, 0), 0.0),  # an empty image: nothing to find
    ("grounding_point", "[24, 26]", [1, 17, 47, 35], (40, 40), 1.0),
    ("grounding_point", "(40, 35)", [1, 17, 47, 35], (40, 40), 1.0),  # on the image's edge: on it
    ("grounding_point", "[45, 20]", [1, 17, 47, 35], (40, 40), 0.0),  # in the gold box, off the image
    ("grounding_point", "[-1, 20]", [-5, 17, 47, 35], (40, 40), 0.0),
]


@pytest.mark.parametrize("task,response,answer,size,expected", SIZED_CASES,
                         ids=[f"{c[0]}:{c[1][:40]!r}@{c[3]}->{c[4]:.4g}" for c in SIZED_CASES])
def test_reward_with_image_size(task, response, answer, size, expected):
    value = REWARDS[task](response, answer, image_size=size)
    assert type(value) is float
    assert value == pytest.approx(expected, abs=1e-12)
    assert safe_reward(task, response, answer, image_size=size) == value


def test_an_honest_near_miss_beats_a_huge_box():
    """The gamed boxes of the issue earn at most their IoU: the huge box, clipped or not, contains the gold one,
    and a zero-area box earns 0; a near miss that does not contain the gold box earns far more."""
    near, huge, gold = "[12, 12, 52, 52]", "[-100000, -100000, 100000, 100000]", [10, 10, 50, 50]
    box = REWARDS["grounding_box"]
    # IoU of the huge box: 1600 over its own area, or over the image's once clipped
    for size, huge_iou in ((None, 1600 / 200_000**2), ((100, 80), 1 / 5), ((640, 480), 1600 / (640 * 480))):
        assert box(near, gold, image_size=size) > 0.9 > 0.2 >= huge_iou >= box(huge, gold, image_size=size)
        assert box(huge, gold, image_size=size) == pytest.approx(huge_iou * (1 + huge_iou) / 2, abs=1e-12)
        assert box("[10, 10, 10, 10]", gold, image_size=size) == 0.0
    assert box(huge, gold, image_size=(100, 80)) == pytest.approx(3 / 25, abs=1e-12)


_COORD = st.integers(-50, 150)
_BOX = st.tuples(_COORD, _COORD, _COORD, _COORD).map(lambda b: [min(b[0], b[2]), min(b[1], b[3]),
                                                               max(b[0], b[2]), max(b[1], b[3])])


def _area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _contains(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


@settings(max_examples=300, deadline=None)
@given(pred=_BOX, gold=_BOX, size=st.one_of(st.none(), st.tuples(st.integers(1, 120), st.integers(1, 120))))
def test_property_in_range_and_no_nested_box_scores_above_its_iou(pred, gold, size):
    """r in [0, 1] and never above the size ratio; when one (clipped) box contains the other,
    r = IoU * (1 + IoU) / 2 <= IoU: neither a huge box nor a tiny one inside the gold box can be gamed."""
    value = REWARDS["grounding_box"](str(pred), gold, image_size=size)
    assert type(value) is float and 0.0 <= value <= 1.0
    if size is not None:
        pred, gold = [[min(max(v, 0), m) for v, m in zip(b, size * 2)] for b in (pred, gold)]
    if _area(pred) == 0 or _area(gold) == 0:
        assert value == 0.0
        return
    assert value <= min(_area(pred), _area(gold)) / max(_area(pred), _area(gold)) + 1e-12
    boxes = torch.tensor([pred, gold], dtype=torch.float64)
    iou = box_iou(boxes[:1], boxes[1:]).item()
    if _contains(pred, gold) or _contains(gold, pred):
        assert value == pytest.approx(iou * (1 + iou) / 2, abs=1e-12)
        assert value <= iou + 1e-12


_SIDE = st.integers(1, 60)
_OFFSET = st.tuples(st.integers(0, 200), st.sampled_from([-1, 1]))


@settings(max_examples=300, deadline=None)
@given(gold_corner=st.tuples(_COORD, _COORD), width=_SIDE, height=_SIDE, near=st.tuples(_OFFSET, _OFFSET),
       extra=st.tuples(st.integers(0, 100), st.integers(0, 100)), far_signs=st.tuples(*[st.sampled_from([-1, 1])] * 2))
def test_property_nearer_disjoint_box_of_the_golds_size_scores_more(gold_corner, width, height, near, extra,
                                                                     far_signs):
    """Two boxes of the gold box's size that do not overlap it: the one farther off in both axes (at least as
    far in each, farther in one) scores less, and both score above 0 (r = area / enclosing area)."""
    (nx, sx), (ny, sy) = near
    if nx < width and ny < height:  # it would overlap the gold box: push it off along x
        nx = width
    if extra == (0, 0):
        extra = (1, 0)
    offsets = {"near": (sx * nx, sy * ny), "far": (far_signs[0] * (nx + extra[0]), far_signs[1] * (ny + extra[1]))}
    x, y = gold_corner
    gold = [x, y, x + width, y + height]
    value = {name: REWARDS["grounding_box"](str([x + dx, y + dy, x + dx + width, y + dy + height]), gold)
             for name, (dx, dy) in offsets.items()}
    assert value["near"] > value["far"] > 0.0
    for name, (dx, dy) in offsets.items():
        expected = width * height / ((width + abs(dx)) * (height + abs(dy)))
        assert value[name] == pytest.approx(expected, abs=1e-12)


ADVERSARIAL = {
    "brackets": "[" * 100_000,
    "numbers": "[1, " * 25_000,
    "times": "[00:0" * 20_000,
    "boxed": "\\boxed{" * 15_000,
    "parens": "(" * 50_000 + ")" * 50_000,
    "think": "<think></think>" * 7_000,
    "digits": "7" * 100_000,
    "frac": "\\frac{1}{" * 11_000,
    "letters": "A B " * 25_000,
    "power": "10**" * 25_000 + "10",
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_100kb(task, text):
    answer = {"math": "17", "multiple_choice": "B", "counting": 3, "temporal_grounding": [2, 5]}
    answer = answer.get(task, [5, 5, 15, 15])
    start = time.perf_counter()
    value = REWARDS[task](text, answer)
    assert time.perf_counter() - start < BOUND_S
    assert type(value) is float and 0.0 <= value <= 1.0


_NUMBER = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3))
_MATH_PIECES = st.sampled_from(list("0123456789+-*/^{}()[]!.,=xy ") + ["\\frac", "\\sqrt", "\\pi", "\\gcd", "**"])
NEAR_VALID = st.one_of(
    st.text(max_size=200),
    st.lists(_NUMBER, max_size=6).map(lambda xs: "[" + ", ".join(map(str, xs)) + "]"),
    st.tuples(*[st.integers(0, 130)] * 4).map(lambda t: f"[{t[0]:02d}:{t[1]:02d},{t[2]:02d}:{t[3]:02d}]"),
    st.lists(_MATH_PIECES, max_size=30).map(lambda xs: "\\boxed{" + "".join(xs) + "}"),
    st.sampled_from(["A", "(b)", "three", "12", "<think>", "</think>"]),
)
ANSWERS = {
    "math": st.sampled_from(["17", "\\frac{1}{2}", "x^2+1"]),
    "multiple_choice": st.sampled_from(["A", "B", "(c)"]),
    "counting": st.integers(0, 20),
    "grounding_box": st.sampled_from([[5, 5, 15, 15], [0, 0, 100, 50]]),
    "grounding_point": st.sampled_from([[5, 5, 15, 15], [0, 0, 100, 50]]),
    "temporal_grounding": st.sampled_from([[2, 5], [0, 60]]),
}


@pytest.mark.parametrize("task", TASKS)
def test_property_float_in_range_and_bounded(task):
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(prefix=st.text(max_size=30), pieces=st.lists(NEAR_VALID, min_size=1, max_size=3), answer=ANSWERS[task],
           size=st.one_of(st.none(), st.tuples(_NUMBER, _NUMBER)))
    def check(prefix, pieces, answer, size):
        keywords = {"image_size": size} if task in SIZED_TASKS and size is not None else {}
        start = time.perf_counter()
        value = REWARDS[task](prefix + " ".join(pieces), answer, **keywords)
        assert time.perf_counter() - start < BOUND_S
        assert type(value) is float and 0.0 <= value <= 1.0

    check()


CORRECT = {
    "math": ("<think>so</think>\\boxed{0.5}", "\\frac{1}{2}"),
    "multiple_choice": ("The answer is (C).", "C"),
    "counting": ("three", 3),
    "grounding_box": ("[5, 5, 15, 15]", [5, 5, 15, 15]),
    "grounding_point": ("[10, 10]", [5, 5, 15, 15]),
    "temporal_grounding": ("[00:02,00:05]", [2, 5]),
}


def test_rewards_off_the_main_thread():
    """math-verify alone raises ValueError off the main thread (its timeouts use signal.alarm); ours score."""
    results = {}

    def score(name, task, response, answer):
        results[name] = REWARDS[task](response, answer)

    threads = [threading.Thread(target=score, args=(task, task, *CORRECT[task])) for task in TASKS]
    threads += [
        threading.Thread(target=score, args=(f"math{i}", "math", f"\\boxed{{{i}/2}}", str(i / 2))) for i in range(8)
    ]
    threads.append(threading.Thread(target=score, args=("huge", "math", "\\boxed{10^{10^{10}}}", "1")))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {**{task: 1.0 for task in TASKS}, **{f"math{i}": 1.0 for i in range(8)}, "huge": 0.0}


def test_math_verify_alone_fails_off_the_main_thread():
    """Why the rewards run math-verify in a forked child: called from a thread with its default timeouts,
    it raises (and with timeouts off, `10**10**10` never returns)."""
    errors = []

    def call():
        try:
            math_verify.parse("$\\frac{1}{2}$")
        except ValueError as e:
            errors.append(str(e))

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "doesn't support threaded environment" in errors[0]


def test_math_leaves_the_callers_alarm_alone():
    """math-verify's timeouts call signal.alarm(0) when done, which would cancel a timer of the caller's."""
    before = signal.setitimer(signal.ITIMER_REAL, 1000)
    try:
        assert REWARDS["math"]("\\boxed{17}", "17") == 1.0
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 900
    finally:
        signal.setitimer(signal.ITIMER_REAL, *before)


def _sleep_then_true():
    time.sleep(30)
    return True


def _raise():
    raise RuntimeError("boom")


def test_bounded_kills_at_the_deadline():
    start = time.perf_counter()
    assert bounded(_sleep_then_true, timeout_s=0.5) is False
    assert time.perf_counter() - start < 3
    assert bounded(_raise, timeout_s=5) is False
    assert bounded(lambda x: x == 2, 2, timeout_s=5) is True


def test_safe_reward():
    assert safe_reward("counting", "3", 3) == 1.0
    with pytest.raises(KeyError, match="known tasks: math, multiple_choice, counting"):
        safe_reward("ocr", "cat", "cat")


# the samples of these types that carry meta["task"], i.e. those the RL stage scores
SYNTHETIC = [
    (t, i)
    for t in ("grounding", "gui", "video", "qa", "reasoning")
    for i in range(6)
    if "task" in make_sample(t, i)["meta"]
]


@pytest.mark.parametrize("sample_type,index", SYNTHETIC, ids=[f"{t}{i}" for t, i in SYNTHETIC])
def test_synthetic_targets_score_one(sample_type, index):
    """The sample's own assistant text scores 1.0 against its meta answer: the data and the verifiers agree."""
    sample = make_sample(sample_type, index)
    target = [m for m in sample["messages"] if m["role"] == "assistant"][-1]
    text = "".join(part["text"] for part in target["content"] if part["type"] == "text")
    assert REWARDS[sample["meta"]["task"]](text, sample["meta"]["answer"]) == 1.0


def test_synthetic_covers_every_type_and_task():
    assert {t for t, _ in SYNTHETIC} == {"grounding", "gui", "video", "qa", "reasoning"}
    tasks = {make_sample(t, i)["meta"]["task"] for t, i in SYNTHETIC}
    assert tasks == {"grounding_box", "grounding_point", "temporal_grounding", "counting", "math"}
