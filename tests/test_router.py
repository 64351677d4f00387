"""The reward router scores one mixed batch: rule-based tasks by their verifier, open-ended prompts by the
reward model of their modality (RLHF and RLVR in the same GRPO batch)."""

import pytest

from mimovl.data.synthetic import make_sample
from mimovl.model.build import build_tiny
from mimovl.model.reward import RewardModel
from mimovl.model.reward import RewardModelScorer
from mimovl.generate.score import build_router
from mimovl.rewards.router import RewardRouter
from mimovl.generate.prompts import to_prompt


@pytest.fixture(scope="module")
def vision_rm(tmp_path_factory):
    model, processor = build_tiny(seed=3)
    return RewardModel(model, modality="vision").save(tmp_path_factory.mktemp("rm") / "hf", processor)


def _open_ended(modality: str):
    """Preference prompts (no task) of the wanted modality."""
    for index in range(40):
        prompt = to_prompt(make_sample("preference", index, split="heldout"))
        if prompt.task is None and prompt.modality == modality:
            return prompt
    raise AssertionError(f"no {modality} preference prompt")


def test_one_batch_mixes_rules_and_the_reward_model(vision_rm):
    router = build_router({"vision": {"path": str(vision_rm)}, "text": {"path": None}})
    counting = next(p for i in range(6) if (p := to_prompt(make_sample("qa", i))).task == "counting")
    grounding = to_prompt(make_sample("grounding", 0))
    open_vision = _open_ended("vision")
    x1, y1, x2, y2 = grounding.answer
    groups = [
        [str(counting.answer), "<think>hmm</think>" + str(counting.answer + 1)],
        [f"[{x1}, {y1}, {x2}, {y2}]", "no box"],
        ["red", "a blue one"],
    ]
    rewards = router.score([counting, grounding, open_vision], groups)
    assert rewards[0] == [1.0, 0.0] and rewards[1] == [1.0, 0.0]
    expected = RewardModelScorer(vision_rm).score([open_vision.sample] * 2, groups[2])
    assert rewards[2] == pytest.approx(expected, abs=1e-6)
    assert all(0.0 < r < 1.0 for r in rewards[2])


def test_open_ended_prompts_without_a_reward_model_are_not_scoreable(vision_rm):
    router = build_router({"vision": {"path": str(vision_rm)}, "text": {"path": "/nowhere"}})
    assert router.can_score(_open_ended("vision")) and not router.can_score(_open_ended("text"))
    assert router.can_score(to_prompt(make_sample("grounding", 0)))
    with pytest.raises(KeyError, match="no text reward model"):
        router.score([_open_ended("text")], [["seven"]])


def test_an_unknown_modality_is_a_config_error():
    with pytest.raises(KeyError, match="modalities"):
        build_router({"audio": {"path": None}})


def test_the_router_clips_boxes_to_the_prompts_image():
    """The router passes each prompt's image size on: boxes are clipped to the 112x112 synthetic image."""
    box = to_prompt(make_sample("grounding", 3))
    assert box.answer == [88, 57, 109, 78] and box.sample["images"][0].size == (112, 112)
    rewards = RewardRouter().score([box], [["[88, 57, 200, 78]", "[-1000, -1000, 1000, 1000]", "[120, 0, 130, 9]"]])
    # clipped: [88, 57, 112, 78] contains the 21x21 gold box, IoU 21/24 = 7/8 (unclipped 21/112); the huge box is
    # the whole image, IoU 441/12544 = 9/256 (unclipped 441/4e6); a containing box scores IoU (1 + IoU) / 2:
    # 7/8 * 15/16 = 105/128 and 9/256 * 265/512 = 2385/131072; a box off the image has no area left
    assert rewards == [[pytest.approx(105 / 128, abs=1e-12), pytest.approx(2385 / 131072, abs=1e-12), 0.0]]
    gui = make_sample("gui", 0)  # its button, [1, 17, 47, 35], on a 40x40 crop of its screen: partly off it
    point = to_prompt({**gui, "images": [gui["images"][0].crop((0, 0, 40, 40))]})
    assert point.answer == [1, 17, 47, 35] and point.sample["images"][0].size == (40, 40)
    assert RewardRouter().score([point], [["[24, 26]", "[45, 26]"]]) == [[1.0, 0.0]]  # 45: on the button, off the image
