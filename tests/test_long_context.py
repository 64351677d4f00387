"""Stage 4's long context at the report's 32K: long documents are split, many-frame videos are packed whole.

The policy (mimovl.data.packing.pack_rows, mimovl.data.split): a document longer than the row is cut at text
into row-sized pieces, each image whole in one piece, and counted (summary.json's `split`). A chat is never cut:
one longer than the row, like a document whose single image is, is dropped and counted (`too_long`). Everything
else lands intact in one row, with its own positions and mask.
"""

import torch
from PIL import Image

from mimovl.data.encode import IMAGE, encode
from mimovl.data.packing import collate_rows, pack_rows
from mimovl.data.schema import chat, document, image, text, video
from mimovl.data.split import shortest_row, split_document
from mimovl.model.processor import build_tiny_processor

SEQ_LEN = 32768


def _words(n: int, seed: int) -> str:
    rng = torch.Generator().manual_seed(seed)
    vocabulary = ["alpha", "beta", "gamma", "delta", "river", "stone", "seven", "north", "glass", "quiet"]
    return " ".join(vocabulary[i] for i in torch.randint(0, len(vocabulary), (n,), generator=rng).tolist())


def _document(words: int, seed: int) -> dict:
    return {"type": "text", "messages": document([text(_words(words, seed))]), "images": [], "videos": []}


def _long_video(frames: int) -> dict:
    clip = {"frames": [Image.new("RGB", (112, 112), (i % 256, 80, 160)) for i in range(frames)],
            "timestamps": [i / 2.0 for i in range(frames)], "fps": 2.0}
    return {"type": "video", "messages": chat([video(), text("When does the light turn red?")], "[01:02,01:10]"),
            "images": [], "videos": [clip]}


def test_long_documents_split_and_256_frame_videos_pack_whole_at_32k():
    processor = build_tiny_processor()
    samples = [_document(4000, 0), _long_video(256), _document(2500, 1), _long_video(128), _document(12000, 2)]
    encoded = [encode(s, processor) for s in samples]
    lengths = [len(e) for e in encoded]
    assert lengths[1] > 2000 and lengths[0] > 16000 and lengths[4] > SEQ_LEN  # long, and one too long for a row
    rows = list(pack_rows(iter(encoded), SEQ_LEN, buffer=8))

    packed = [s for row in rows for s in row.samples]
    whole = [s for s in packed if any(s is e for e in encoded)]  # the very tensors encode made
    assert sorted(len(s) for s in whole) == sorted(lengths[:4])  # every fitting one, whole
    pieces = [s for s in packed if not any(s is e for e in encoded)]
    assert len(pieces) == 2 and sum(map(len, pieces)) == lengths[4] and max(map(len, pieces)) == SEQ_LEN
    assert sum(row.too_long for row in rows) == 0 and sum(row.split for row in rows) == 1
    batch = collate_rows(rows, seq_len=SEQ_LEN, pad_id=processor.tokenizer.pad_token_id)
    assert batch["split"].item() == 1 and batch["too_long"].item() == 0
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


ROW = 480  # the rows of the split tests: an interleaved document of 1300 tokens is ~3 rows long


def _interleaved(images: int, words: int = 40, size: tuple[int, int] | None = None) -> dict:
    parts, pictures = [], []
    for k in range(images):
        parts += [text(_words(words, k)), image()]
        pictures.append(Image.new("RGB", size or (112 + 28 * k, 112), (40 * k, 90, 200)))
    parts.append(text(_words(30, 99)))
    return {"type": "interleaved", "messages": document(parts), "images": pictures, "videos": []}


def _image_runs(sample) -> list[int]:
    """The length of each run of image tokens, in order."""
    kinds, runs = sample.mm_token_type_ids.tolist(), []
    for t, kind in enumerate(kinds):
        if kind == IMAGE and t and kinds[t - 1] == IMAGE:
            runs[-1] += 1
        elif kind == IMAGE:
            runs.append(1)
    return runs


def test_a_long_interleaved_document_splits_into_row_sized_pieces_with_every_image_whole():
    processor = build_tiny_processor()
    merge = processor.image_processor.merge_size
    vision_start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    vision_end = processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    original = encode(_interleaved(6), processor)
    assert 2 * ROW < len(original) <= 3 * ROW
    pieces = split_document(original, ROW)

    assert len(pieces) == 3 and all(len(p) <= ROW for p in pieces)
    for name in ("input_ids", "targets", "mm_token_type_ids"):  # nothing dropped, targets as they were
        assert torch.equal(torch.cat([getattr(p, name) for p in pieces]), getattr(original, name))
    for before, after in zip(pieces, pieces[1:]):  # greedy: a piece is short only when the next image won't fit
        if len(before) < ROW:
            assert after.input_ids[0] == vision_start
            assert len(before) + after.input_ids.tolist().index(vision_end) + 1 > ROW
    assert [len(p) for p in pieces] == [480, 453, 367]  # the second cut moved back to before an image

    offsets = [0, *original.image_grid_thw.prod(dim=1).cumsum(0).tolist()]
    image = 0
    for piece in pieces:  # each image's tokens all in one piece, with its grid row and its own patch rows
        assert _image_runs(piece) == [t * h * w // merge**2 for t, h, w in piece.image_grid_thw.tolist()]
        start = 0
        for grid in piece.image_grid_thw:
            assert torch.equal(grid, original.image_grid_thw[image])
            patches = int(grid.prod())
            assert torch.equal(piece.pixel_values[start : start + patches],
                               original.pixel_values[offsets[image] : offsets[image + 1]])
            start, image = start + patches, image + 1
        assert start == len(piece.pixel_values)
    assert image == len(original.image_grid_thw) == 6


def test_only_what_cannot_fit_alone_is_dropped_and_split_documents_are_counted():
    processor = build_tiny_processor()
    long_document = encode(_interleaved(6), processor)
    huge_image = encode(_interleaved(1, words=5, size=(224, 224)), processor)  # one image of 64 tokens
    long_chat = encode({"type": "qa", "messages": chat([text(_words(20, 7))], "river"), "images": [],
                        "videos": []}, processor)
    short = encode(_document(5, 3), processor)
    seq_len = 60
    assert len(long_document) > seq_len and len(long_chat) > seq_len and len(short) <= seq_len
    image_tokens = int(huge_image.image_grid_thw.prod()) // processor.image_processor.merge_size**2
    assert image_tokens == 64 > seq_len  # the document is dropped whole: its image fits in no row
    assert split_document(huge_image, seq_len) is None and split_document(long_chat, seq_len) is None
    assert shortest_row(huge_image) == image_tokens + 2 and shortest_row(long_chat) == len(long_chat)
    assert shortest_row(long_document) == 8 * 18 // 4 + 2 <= seq_len  # its largest image, 1x8x18 patches

    samples = [long_document, huge_image, long_chat, short]
    rows = list(pack_rows(iter(samples), seq_len, buffer=16))
    packed = [s for row in rows for s in row.samples]
    assert sum(row.split for row in rows) == 1 and sum(row.too_long for row in rows) == 2
    assert any(s is short for s in packed) and not any(s is long_chat or s is huge_image for s in packed)
    assert sum(len(s) for s in packed) == len(long_document) + len(short)
    batch = collate_rows(rows, seq_len, pad_id=processor.tokenizer.pad_token_id)
    assert batch["split"].item() == 1 and batch["too_long"].item() == 2
