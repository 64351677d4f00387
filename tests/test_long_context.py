"""Stage 4's long context at the report's 32K: long documents and many-frame videos are packed whole.

The policy (mimovl.data.packing.pack_rows): a sample is never cut. One longer than the row is dropped and
counted (summary.json's `too_long`); everything else lands intact in one row, with its own positions and mask.
"""

import torch
from PIL import Image

from mimovl.data.encode import encode
from mimovl.data.packing import collate_rows, pack_rows
from mimovl.data.schema import chat, document, text, video
from mimovl.model.processor import build_tiny_processor

SEQ_LEN = 32768


def _document(words: int, seed: int) -> dict:
    rng = torch.Generator().manual_seed(seed)
    vocabulary = ["alpha", "beta", "gamma", "delta", "river", "stone", "seven", "north", "glass", "quiet"]
    body = " ".join(vocabulary[i] for i in torch.randint(0, len(vocabulary), (words,), generator=rng).tolist())
    return {"type": "text", "messages": document([text(body)]), "images": [], "videos": []}


def _long_video(frames: int) -> dict:
    clip = {"frames": [Image.new("RGB", (112, 112), (i % 256, 80, 160)) for i in range(frames)],
            "timestamps": [i / 2.0 for i in range(frames)], "fps": 2.0}
    return {"type": "video", "messages": chat([video(), text("When does the light turn red?")], "[01:02,01:10]"),
            "images": [], "videos": [clip]}


def test_long_documents_and_256_frame_videos_pack_whole_at_32k():
    processor = build_tiny_processor()
    samples = [_document(4000, 0), _long_video(256), _document(2500, 1), _long_video(128), _document(12000, 2)]
    encoded = [encode(s, processor) for s in samples]
    lengths = [len(e) for e in encoded]
    assert lengths[1] > 2000 and lengths[0] > 16000 and lengths[4] > SEQ_LEN  # long, and one too long for a row
    rows = list(pack_rows(iter(encoded), SEQ_LEN, buffer=8))

    packed = [s for row in rows for s in row.samples]
    assert sorted(len(s) for s in packed) == sorted(n for n in lengths if n <= SEQ_LEN)  # every fitting one, whole
    assert sum(row.too_long for row in rows) == 1
    for sample in packed:  # the very tensors encode made: nothing cut or rewritten
        assert any(sample is e for e in encoded)
    batch = collate_rows(rows, seq_len=SEQ_LEN, pad_id=processor.tokenizer.pad_token_id)
    for r, row in enumerate(rows):
        start = 0
        for k, sample in enumerate(row.samples, start=1):
            span = slice(start, start + len(sample))
            assert torch.equal(batch["input_ids"][r, span], sample.input_ids)
            assert (batch["segment_ids"][r, span] == k).all()
            start += len(sample)
        assert row.length <= SEQ_LEN
    video_sample = encoded[1]
    assert video_sample.video_grid_thw[0, 0].item() == 128  # 256 frames / temporal patch 2: none dropped
