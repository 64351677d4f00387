"""Packing encoded samples into fixed-length rows, and collating rows into a batch.

A packed row holds several whole samples back to back; `segment_ids` numbers them 1, 2, ... and marks the
padding at the end with 0. The model never lets one sample attend to another and gives each sample its own
MRoPE positions (`mimovl.model.packed`), so a packed row computes exactly what its samples compute one by
one. A document longer than the row is cut at text into row-sized pieces, each image whole in one piece
(`mimovl.data.split`), and counted as split; a chat longer than the row, or a document with an image longer than
the row, is dropped and counted, never cut: a chat's turns belong together, and a cut through an image breaks it.
"""

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mimovl.data.encode import IGNORE, Encoded
from mimovl.data.schema import SAMPLE_TYPES
from mimovl.data.split import split_document
from mimovl.data.stream import DROPPED, SKIP_REASONS
from mimovl.errors import UsageError

# Vision tensors, concatenated over the samples of a batch in order (the model consumes them in that order).
VISION_FIELDS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass
class Row:
    """One packed sequence: whole samples (or pieces of split documents), plus the corrupt and too-long samples
    skipped on the way, the documents split on the way (and what the reader lost, by `mimovl.data.stream.DROPPED`
    name)."""

    samples: list[Encoded] = field(default_factory=list)
    skipped: int = 0
    too_long: int = 0
    dropped: Counter = field(default_factory=Counter)
    split: int = 0

    @property
    def length(self) -> int:
        return sum(len(s) for s in self.samples)


# Too-long samples in a row, with nothing that fits, before packing gives up (a seq_len below every sample).
MAX_TOO_LONG_IN_A_ROW = 1000


def pack_rows(samples: Iterable[Encoded], seq_len: int, buffer: int) -> Iterator[Row]:
    """Groups samples into rows of at most seq_len tokens, deterministically.

    Each row starts with the oldest held sample, so no sample waits for more than `buffer` rows, then is
    filled best-fit: the longest held sample that still fits, again and again, which keeps rows nearly full.
    A document longer than seq_len is held as its pieces (`split_document`); another sample longer than seq_len
    is dropped. Raises a UsageError when MAX_TOO_LONG_IN_A_ROW samples in a row are dropped so.
    """
    return Packer(seq_len, buffer).rows((None, sample) for sample in samples)


class Packer:
    """`pack_rows` as an object whose held samples and running counts are its state, so that a resumed stream
    packs the rows the uninterrupted one packs.

    `rows(items)` takes (tag, sample) pairs; a tag is the caller's name for where a sample came from (the
    stream's "origin"), kept with each held piece. `state_dict()` gives the held pieces by (tag, piece index) and
    the counts; `load_state_dict(state, samples)` holds them again, asking `samples(tags)` for {tag: sample}.
    """

    def __init__(self, seq_len: int, buffer: int):
        self.seq_len, self.buffer = seq_len, buffer
        self.held: list[tuple[Any, int, Encoded]] = []  # (tag, piece index, piece), oldest first
        self.skipped = self.too_long = self.too_long_in_a_row = self.split = 0
        self.dropped: Counter = Counter()
        self.exhausted = False  # the input ended

    def rows(self, items: Iterable[tuple[Any, Encoded]]) -> Iterator[Row]:
        items = iter(items)
        while True:
            while not self.exhausted and len(self.held) < self.buffer:
                item = next(items, None)
                if item is None:
                    self.exhausted = True
                else:
                    self._hold(*item)
            if not self.held:
                return
            yield self._row()

    def _hold(self, tag, sample: Encoded) -> None:
        self.skipped += sample.skipped
        self.dropped.update(sample.dropped)
        if (pieces := split_document(sample, self.seq_len)) is not None:
            self.held.extend((tag, i, piece) for i, piece in enumerate(pieces))
            self.split += len(pieces) > 1
            self.too_long_in_a_row = 0
            return
        self.too_long += 1
        self.too_long_in_a_row += 1
        if self.too_long_in_a_row >= MAX_TOO_LONG_IN_A_ROW and not self.held:
            raise UsageError(
                f"stage.seq_len={self.seq_len}: {self.too_long_in_a_row} samples in a row are longer than a row (the "
                f"last: {len(sample)} tokens, type {sample.type}); raise stage.seq_len"
            )

    def _row(self) -> Row:
        row = Row(skipped=self.skipped, too_long=self.too_long, dropped=self.dropped, split=self.split)
        self.skipped = self.too_long = self.split = 0
        self.dropped = Counter()
        space, pick = self.seq_len, 0
        while True:
            piece = self.held.pop(pick)[2]
            row.samples.append(piece)
            space -= len(piece)
            fitting = [i for i, (_, _, held) in enumerate(self.held) if len(held) <= space]
            if not fitting:
                return row
            pick = max(fitting, key=lambda i: len(self.held[i][2]))  # the first of the longest

    def state_dict(self) -> dict:
        return {"held": [(tag, i) for tag, i, _ in self.held], "skipped": self.skipped, "too_long": self.too_long,
                "too_long_in_a_row": self.too_long_in_a_row, "split": self.split, "dropped": dict(self.dropped),
                "exhausted": self.exhausted}

    def load_state_dict(self, state: dict, samples: Callable[[list], dict]) -> None:
        held = [(tuple(tag) if isinstance(tag, list) else tag, i) for tag, i in state["held"]]
        again = samples(list(dict.fromkeys(tag for tag, _ in held)))
        pieces = {tag: split_document(sample, self.seq_len) for tag, sample in again.items()}
        self.held = [(tag, i, pieces[tag][i]) for tag, i in held]
        self.skipped, self.too_long, self.split = state["skipped"], state["too_long"], state["split"]
        self.too_long_in_a_row, self.exhausted = state["too_long_in_a_row"], state["exhausted"]
        self.dropped = Counter(state["dropped"])


def collate_rows(rows: list[Row], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Stacks packed rows into a batch of fixed shape (B, seq_len), padding each row at its end.

    Returns input_ids, targets (next-token labels, IGNORE where nothing is learned), mm_token_type_ids,
    segment_ids (1.. per sample, 0 for padding; a sample with branches numbers its prefix, then each branch),
    prefix_ids (only when a sample has branches: per token the segment of its prefix, 0 = none), type_ids
    (index into SAMPLE_TYPES, -1 for padding), the vision tensors of all samples in order, the counts `skipped`,
    `too_long` and `split` (documents cut into pieces), and `dropped`: what the reader lost, one count per
    `mimovl.data.stream.DROPPED` name, in that order (`dropped_counts` names them).
    """
    batch = {
        "input_ids": torch.full((len(rows), seq_len), pad_id, dtype=torch.long),
        "targets": torch.full((len(rows), seq_len), IGNORE, dtype=torch.long),
        "mm_token_type_ids": torch.zeros((len(rows), seq_len), dtype=torch.long),
        "segment_ids": torch.zeros((len(rows), seq_len), dtype=torch.long),
        "type_ids": torch.full((len(rows), seq_len), -1, dtype=torch.long),
    }
    if any(sample.branches for row in rows for sample in row.samples):
        batch["prefix_ids"] = torch.zeros((len(rows), seq_len), dtype=torch.long)
    vision: dict[str, list[torch.Tensor]] = {name: [] for name in VISION_FIELDS}
    for b, row in enumerate(rows):
        start, segment = 0, 1
        for sample in row.samples:
            end = start + len(sample)
            batch["input_ids"][b, start:end] = sample.input_ids
            batch["targets"][b, start:end] = sample.targets
            batch["mm_token_type_ids"][b, start:end] = sample.mm_token_type_ids
            batch["segment_ids"][b, start:end] = segment
            batch["type_ids"][b, start:end] = SAMPLE_TYPES.index(sample.type)
            prefix, branch_start = segment, end - sum(sample.branches)
            for length in sample.branches:  # each branch a segment of its own that also sees the prefix
                segment += 1
                batch["segment_ids"][b, branch_start : branch_start + length] = segment
                batch["prefix_ids"][b, branch_start : branch_start + length] = prefix
                branch_start += length
            for name in VISION_FIELDS:
                if (value := getattr(sample, name)) is not None:
                    vision[name].append(value)
            start, segment = end, segment + 1
    for name, parts in vision.items():
        if parts:
            batch[name] = torch.cat(parts)
    batch["skipped"] = torch.tensor(sum(r.skipped for r in rows))
    batch["too_long"] = torch.tensor(sum(r.too_long for r in rows))
    batch["split"] = torch.tensor(sum(r.split for r in rows))
    dropped = sum((r.dropped for r in rows), Counter())
    batch["dropped"] = torch.tensor([dropped[name] for name in DROPPED])
    return batch


def dropped_counts(values: Sequence[float] | None = None) -> dict:
    """batch["dropped"] values (summed over ranks, say) as summary figures: {"skipped_by_reason": {reason: n}
    over SKIP_REASONS, "shard_errors": n}; all zero without values."""
    named = dict(zip(DROPPED, [int(v) for v in values] if values is not None else [0] * len(DROPPED)))
    return {"skipped_by_reason": {reason: named[reason] for reason in SKIP_REASONS},
            "shard_errors": named["shard_errors"]}


def add_counts(total: dict, more: dict) -> dict:
    """`total` plus `more`, key by key, into nested dicts (a new dict of ints); `more` may lack keys of `total`."""
    return {name: add_counts(value, more.get(name, {})) if isinstance(value, dict)
            else value + int(more.get(name, 0)) for name, value in total.items()}


def flat_counts(counts: dict, prefix: str = "") -> dict[str, float]:
    """Nested counts as {"a/b": n} (for logging one metric each)."""
    flat = {}
    for name, value in counts.items():
        if isinstance(value, dict):
            flat.update(flat_counts(value, f"{prefix}{name}/"))
        else:
            flat[f"{prefix}{name}"] = float(value)
    return flat


def learned_tokens(batch: dict) -> int:
    """The positions a batch learns from (targets other than IGNORE)."""
    return int((batch["targets"] != IGNORE).sum())


def with_window(batches: Iterable[dict], accumulate: int, name: str = "window_tokens",
                count: Callable[[dict], int] = learned_tokens) -> Iterator[dict]:
    """Adds `name` to each batch: the total of `count` over all `accumulate` batches that make up its optimizer
    step (its gradient-accumulation window), so every micro-batch can weigh its loss by the step's total: learned
    tokens for cross-entropy, pairs for a reward model."""
    batches = iter(batches)
    while window := list(itertools.islice(batches, accumulate)):
        total = torch.tensor(sum(count(b) for b in window))
        for batch in window:
            batch[name] = total
            yield batch


def with_window_tokens(batches: Iterable[dict], accumulate: int) -> Iterator[dict]:
    """`with_window` of learned tokens (`window_tokens`)."""
    return with_window(batches, accumulate)
