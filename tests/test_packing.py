"""Packing: exact row filling, and packed losses equal to per-sample losses (float32)."""

import pytest
import torch
from PIL import Image

from mimovl.data.encode import IGNORE, Encoded, encode
from mimovl.data.packing import collate_rows, pack_rows
from mimovl.data.schema import chat, document, image, text, video
from mimovl.errors import UsageError
from mimovl.model.attention import use_attention
from mimovl.model.build import build_tiny
from mimovl.model.logits import token_losses
from mimovl.model.packed import PackedVLM


def _sized(n: int, skipped: int = 0) -> Encoded:
    ids = torch.arange(n)
    return Encoded("text", ids, ids, torch.zeros(n, dtype=torch.long), skipped=skipped)


def test_best_fit_fills_rows_exactly():
    lengths = [6, 5, 4, 3, 2, 12, 1]
    rows = list(pack_rows((_sized(n, skipped=1) for n in lengths), seq_len=10, buffer=8))
    # 12 is too long and dropped; best fit: [6, 4], [5, 3, 2], [1].
    assert [[len(s) for s in r.samples] for r in rows] == [[6, 4], [5, 3, 2], [1]]
    assert sum(r.too_long for r in rows) == 1
    assert sum(r.skipped for r in rows) == len(lengths)


def test_rows_start_with_the_oldest_sample():
    # Best fit alone would pair each 9 with a 1 and leave the 5 waiting for as long as 9s and 1s keep coming.
    lengths = [5] + [9, 1] * 3
    rows = list(pack_rows((_sized(n) for n in lengths), seq_len=10, buffer=4))
    assert [[len(s) for s in r.samples] for r in rows] == [[5, 1], [9, 1], [9, 1], [9]]


def test_samples_that_never_fit_raise_instead_of_stalling():
    with pytest.raises(UsageError, match="stage.seq_len=8: .* longer than a row"):
        list(pack_rows((_sized(9) for _ in range(10_000)), seq_len=8, buffer=4))


def test_collate_marks_segments_and_padding():
    rows = list(pack_rows([_sized(3), _sized(2)], seq_len=8, buffer=4))
    batch = collate_rows(rows, seq_len=8, pad_id=99)
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 0, 0, 0]]
    assert batch["input_ids"][0, 5:].tolist() == [99, 99, 99]
    assert (batch["targets"][0, 5:] == IGNORE).all()


def _image(colour, size=(56, 84)):
    return Image.new("RGB", size, colour)


def _samples():
    frames = [_image((20 * i, 100, 50), (56, 56)) for i in range(4)]
    return [
        {"type": "grounding", "messages": chat([image(), text("Where is the red box?")], "[3, 4, 50, 60]"),
         "images": [_image("red")], "videos": []},
        {"type": "caption", "messages": document([image(), text("two blue circles")]),
         "images": [_image("blue", (84, 56))], "videos": []},
        {"type": "text", "messages": document([text("one two three four five")]), "images": [], "videos": []},
        {"type": "video", "messages": chat([video(), text("When does it move?")], "[00:01,00:02]"),
         "images": [], "videos": [{"frames": frames, "timestamps": [0, 0.5, 1, 1.5], "fps": 2.0}]},
        {"type": "reasoning", "messages": chat([text("2 + 3?")], "<think>2 + 3 = 5</think>5"),
         "images": [], "videos": []},
    ]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=0)


def _alone_loss_sum(model, sample: Encoded) -> float:
    out = model(
        input_ids=sample.input_ids[None], mm_token_type_ids=sample.mm_token_type_ids[None],
        pixel_values=sample.pixel_values, image_grid_thw=sample.image_grid_thw,
        pixel_values_videos=sample.pixel_values_videos, video_grid_thw=sample.video_grid_thw,
        second_per_grid_ts=sample.second_per_grid_ts, use_cache=False,
    )
    model.model.rope_deltas = None  # the model caches rope deltas between calls; a fresh sample must not see them
    return float(token_losses(out.logits, sample.targets[None]).sum())


def test_packed_loss_equals_per_sample_losses(tiny):
    model, processor = tiny
    model.eval()
    encoded = [encode(s, processor) for s in _samples()]
    assert all(e.targets.ne(IGNORE).any() for e in encoded)
    rows = list(pack_rows(encoded, seq_len=sum(map(len, encoded)) + 7, buffer=8))
    assert len(rows) == 1
    batch = collate_rows(rows, seq_len=rows[0].length + 7, pad_id=processor.tokenizer.pad_token_id)
    with torch.no_grad():
        packed = token_losses(PackedVLM(model)(batch), batch["targets"])
        alone = {id(s): _alone_loss_sum(model, s) for s in encoded}
    for segment, sample in enumerate(rows[0].samples, start=1):
        packed_sum = float(packed[0][batch["segment_ids"][0] == segment].sum())
        assert packed_sum == pytest.approx(alone[id(sample)], abs=1e-5 * max(1, len(sample)))


def test_chat_learns_only_assistant_turns(tiny):
    _, processor = tiny
    sample = encode(_samples()[0], processor)
    learned = processor.tokenizer.decode(sample.targets[sample.targets != IGNORE])
    assert learned == "[3, 4, 50, 60]<|im_end|>"


def _counting(forward, counts: dict, key: str):
    def counted(*args, **kwargs):
        counts[key] += 1
        return forward(*args, **kwargs)

    return counted


@pytest.mark.parametrize("backend", ["sdpa_dense", "sdpa_varlen"])
def test_activation_checkpointing_gives_the_same_gradients(backend):
    grads, calls = [], []
    for checkpointing in (False, True):
        model, processor = build_tiny(seed=0)
        use_attention(model, backend)  # the varlen path's layout travels through the checkpointed layers
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        counts = {"vit": 0, "llm": 0}
        for part, layer in (("vit", model.model.visual.blocks[0]), ("llm", model.model.language_model.layers[0])):
            layer.forward = _counting(layer.forward, counts, part)
        encoded = [encode(s, processor) for s in _samples()]
        rows = list(pack_rows(encoded, seq_len=sum(map(len, encoded)), buffer=8))
        batch = collate_rows(rows, seq_len=rows[0].length, pad_id=processor.tokenizer.pad_token_id)
        token_losses(PackedVLM(model)(batch), batch["targets"]).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        calls.append(counts)
    assert calls == [{"vit": 1, "llm": 1}, {"vit": 2, "llm": 2}]  # checkpointed layers recompute in backward
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)
