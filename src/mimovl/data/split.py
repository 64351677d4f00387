"""Cutting a document longer than a row into row-sized pieces, each image and video kept whole.

A document (`Encoded.document`: caption, interleaved or text, see `mimovl.data.encode`) learns all of its text,
so any text boundary is a fair place to cut it. A piece is a sample of its own: it holds its slice of the
tokens and exactly the vision tensors of the images and videos whose tokens lie in it, and packing gives it
fresh positions like any other sample. An image or video stays in one piece with the `<|vision_start|>` and
`<|vision_end|>` either side of its tokens. Targets are kept as they are: a piece's last position still
predicts the first token of the next piece. Chats are never cut (their turns belong together).
"""

import torch

from mimovl.data.encode import IMAGE, TEXT, VIDEO, Encoded


def split_document(sample: Encoded, seq_len: int) -> list[Encoded] | None:
    """`sample` as pieces of at most seq_len tokens, cut as late as possible (greedy), in order; [sample] when it
    fits already. None when it cannot be cut: a chat (or a `mimovl.data.pairs.Pair`, packed like a sample), or
    a document with an image or video (with its two markers) longer than seq_len. The first piece keeps the
    sample's `skipped` and `dropped` counts."""
    if len(sample) <= seq_len:
        return [sample]
    if not (isinstance(sample, Encoded) and sample.document):
        return None
    runs = vision_runs(sample.mm_token_type_ids)
    for kind, grid_thw in ((IMAGE, sample.image_grid_thw), (VIDEO, sample.video_grid_thw)):
        if sum(run[2] == kind for run in runs) != (0 if grid_thw is None else len(grid_thw)):
            raise ValueError(f"a {sample.type} sample's vision token runs do not match its image/video grids")
    cuts = piece_ends(len(sample), runs, seq_len)
    if cuts is None:
        return None
    return [_piece(sample, start, end, runs, first=start == 0) for start, end in zip([0, *cuts[:-1]], cuts)]


def shortest_row(sample: Encoded) -> int:
    """The fewest tokens a row must hold to take `sample` without dropping it: its length, or for a document its
    longest image or video with the markers either side (its text can be cut anywhere)."""
    if not sample.document:
        return len(sample)
    n = len(sample)
    return max([1] + [min(end + 1, n) - max(start - 1, 0) for start, end, _ in vision_runs(sample.mm_token_type_ids)])


def vision_runs(mm_token_type_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """(start, end, kind) of every run of one image's or one video's tokens, in order; kind is IMAGE or VIDEO."""
    types = mm_token_type_ids.tolist()
    runs, start = [], 0
    for t in range(1, len(types) + 1):
        if t == len(types) or types[t] != types[start]:
            if types[start] != TEXT:
                runs.append((start, t, types[start]))
            start = t
    return runs


def piece_ends(length: int, runs: list[tuple[int, int, int]], seq_len: int) -> list[int] | None:
    """The end of each piece, the last being `length`: each as far as seq_len allows without a cut inside a run
    or between a run and a marker either side. None when some run with its markers is longer than seq_len."""
    allowed = torch.ones(length + 1, dtype=torch.bool)  # allowed[c]: a piece may end before token c
    for start, end, _ in runs:
        allowed[start : end + 1] = False  # not after its <|vision_start|>, nor before its <|vision_end|>
    allowed[length] = True
    ends, start = [], 0
    while start < length:
        window = allowed[start + 1 : min(start + seq_len, length) + 1].nonzero()
        if not len(window):
            return None
        start += 1 + int(window[-1])
        ends.append(start)
    return ends


def _piece(sample: Encoded, start: int, end: int, runs: list[tuple[int, int, int]], first: bool) -> Encoded:
    """Tokens start:end of `sample` with the vision tensors of the images and videos they hold."""
    images = _inside(runs, IMAGE, start, end)
    videos = _inside(runs, VIDEO, start, end)
    pixel_values, image_grid_thw = _vision(sample.pixel_values, sample.image_grid_thw, images)
    pixel_values_videos, video_grid_thw = _vision(sample.pixel_values_videos, sample.video_grid_thw, videos)
    seconds = sample.second_per_grid_ts
    return Encoded(
        type=sample.type,
        input_ids=sample.input_ids[start:end],
        targets=sample.targets[start:end],
        mm_token_type_ids=sample.mm_token_type_ids[start:end],
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        pixel_values_videos=pixel_values_videos,
        video_grid_thw=video_grid_thw,
        second_per_grid_ts=seconds[videos] if seconds is not None and videos.stop > videos.start else None,
        skipped=sample.skipped if first else 0,
        dropped=dict(sample.dropped) if first else {},
        document=True,
    )


def _inside(runs: list[tuple[int, int, int]], kind: int, start: int, end: int) -> slice:
    """Which images (or videos), by index in the sample, have their tokens in start:end."""
    starts = [run_start for run_start, _, run_kind in runs if run_kind == kind]
    return slice(sum(s < start for s in starts), sum(s < end for s in starts))


def _vision(pixels: torch.Tensor | None, grid_thw: torch.Tensor | None, which: slice):
    """The patch rows and grid rows of images (or videos) `which`: each has t*h*w rows of `pixels`; None, None
    for none."""
    if grid_thw is None or which.stop == which.start:
        return None, None
    offsets = [0, *grid_thw.prod(dim=1).cumsum(0).tolist()]
    return pixels[offsets[which.start] : offsets[which.stop]], grid_thw[which]
