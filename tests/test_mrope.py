"""MRoPE positions: the text after a video starts after the video's last temporal position (Qwen2.5-VL's rule,
and vLLM's), and images are placed as transformers places them."""

import pytest
import torch
from mimovl.data.encode import IMAGE, TEXT, VIDEO, encode_prompt
from mimovl.data.synthetic import make_sample
from mimovl.generate.prompts import to_prompt
from mimovl.model import build_tiny
from mimovl.model.mrope import rope_index


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny(seed=0)
    return model.eval(), processor


def test_text_after_a_video_starts_after_its_last_temporal_position(tiny):
    model, _ = tiny
    # 2 text tokens, a video of 3 temporal patches of 4x4 patches (2x2 merged tokens each), 2 text tokens.
    types = torch.tensor([[TEXT] * 2 + [VIDEO] * 12 + [TEXT] * 2])
    ids = torch.zeros_like(types)
    positions, deltas = rope_index(model.model, ids, types, video_grid_thw=torch.tensor([[3, 4, 4]]),
                                   second_per_grid_ts=torch.tensor([1.0]))
    assert model.config.vision_config.tokens_per_second == 4
    t, h, w = positions[:, 0].tolist()
    assert t[:2] == h[:2] == w[:2] == [0, 1]
    assert t[2:14] == [2] * 4 + [6] * 4 + [10] * 4  # 1 s per temporal patch x 4 positions per second
    assert h[2:14] == [2, 2, 3, 3] * 3 and w[2:14] == [2, 3, 2, 3] * 3
    assert t[14:] == h[14:] == w[14:] == [11, 12]  # transformers 5.19 gives [4, 5]
    assert deltas.tolist() == [[13 - 16]]


def test_images_are_placed_as_transformers_places_them(tiny, make_image):
    model, processor = tiny
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this?"},
                                             {"type": "image"}, {"type": "text", "text": "Two."}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[prompt], images=[make_image(seed=0), make_image(width=224, height=112, seed=1)],
                      return_tensors="pt")
    assert (batch["mm_token_type_ids"] == IMAGE).sum() > 0
    args = dict(input_ids=batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    theirs = type(model.model).get_rope_index(model.model, **args)  # transformers' own, not the instance's
    ours = rope_index(model.model, **args)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_loaded_models_use_the_rule_in_their_own_forward(tiny):
    model, processor = tiny
    inputs = encode_prompt(to_prompt(make_sample("video", 0, split="heldout")).sample, processor)
    args = {key: inputs[key] for key in ("input_ids", "mm_token_type_ids", "video_grid_thw", "second_per_grid_ts")}
    used, _ = model.model.get_rope_index(**args)
    assert torch.equal(used, rope_index(model.model, **args)[0])
    library, _ = type(model.model).get_rope_index(model.model, **args)
    assert not torch.equal(used, library)  # the case the rule exists for: text after a video


def test_a_video_without_its_grid_is_an_error(tiny):
    model, _ = tiny
    types = torch.tensor([[TEXT] * 2 + [VIDEO] * 4])
    with pytest.raises(ValueError, match="more videos than the grids"):
        rope_index(model.model, torch.zeros_like(types), types)
