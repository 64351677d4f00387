"""Preference pairs for Bradley-Terry reward models: batches whose rows hold whole (chosen, rejected) pairs.

A `preference` sample (see `mimovl.data.schema`) is a prompt plus meta["chosen"] and meta["rejected"]. Each
answer becomes the assistant turn of a chat encoded by `mimovl.data.encode.encode`, cut right after the
`<|im_end|>` that closes it: the last token of every sequence is where a reward model reads its score. Pairs
are packed whole, chosen first, so in each row segments (1, 2), (3, 4), ... are pairs, and in row-major order
every odd sequence of a batch is a chosen answer and the next one its rejected twin.
"""

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from mimovl.data.datamodule import PackedStream, ShardDataModule
from mimovl.data.encode import END_OF_TURN, Encoded, encode
from mimovl.data.packing import Row, collate_rows, pack_rows, with_window
from mimovl.data.schema import MODALITIES

log = logging.getLogger(__name__)

# Samples in a row that the modality filter drops before the stream is declared empty of usable pairs.
MAX_FILTERED_IN_A_ROW = 10_000


def is_text_only(sample: dict) -> bool:
    """True when the sample has no image and no video."""
    return not sample.get("images") and not sample.get("videos")


def with_response(sample: dict, response: str) -> dict:
    """The chat of `sample`'s prompt answered by `response` (a new dict; `sample` is left as it is)."""
    answer = {"role": "assistant", "content": [{"type": "text", "text": response}]}
    return {**sample, "messages": list(sample["messages"]) + [answer]}


def encode_response(sample: dict, response: str, processor) -> Encoded:
    """`sample`'s prompt + `response` as model tokens, ending with the `<|im_end|>` that closes the response."""
    encoded = encode(with_response(sample, response), processor)
    end_id = processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
    end = int((encoded.input_ids == end_id).nonzero()[-1]) + 1  # the chat template adds a newline after it
    encoded.input_ids = encoded.input_ids[:end]
    encoded.targets = encoded.targets[:end]
    encoded.mm_token_type_ids = encoded.mm_token_type_ids[:end]
    return encoded


@dataclass(eq=False)
class Pair:
    """A chosen and a rejected answer to one prompt; packs as one unit of their summed length."""

    chosen: Encoded
    rejected: Encoded
    skipped: int = 0  # corrupt samples read just before this pair (or before the samples the modality drops)
    dropped: Counter = field(default_factory=Counter)  # the same by reason, plus shard errors (stream.DROPPED)
    type: str = "preference"

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def encode_pair(sample: dict, processor) -> Pair:
    """Both answers of a preference sample, encoded (ValueError for a sample of another type)."""
    if sample["type"] != "preference":
        raise ValueError(
            f"sample {sample.get('key')} (source {sample.get('source')}) is a {sample['type']!r} sample; a reward "
            "model trains on 'preference' samples only: give stage.mix preference sources only"
        )
    chosen, rejected = sample["meta"]["chosen"], sample["meta"]["rejected"]
    return Pair(encode_response(sample, chosen, processor), encode_response(sample, rejected, processor))


def unpack_pairs(row: Row) -> Row:
    """A row of Pairs as a row of Encoded sequences: each pair's chosen answer, then its rejected one."""
    sequences = [e for pair in row.samples for e in (pair.chosen, pair.rejected)]
    return Row(samples=sequences, skipped=row.skipped, too_long=row.too_long, dropped=row.dropped)


def collate_pairs(rows: list[Row], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """`collate_rows` of rows of Pairs, plus `pairs`: how many pairs the batch holds."""
    batch = collate_rows([unpack_pairs(r) for r in rows], seq_len, pad_id)
    batch["pairs"] = torch.tensor(sum(len(r.samples) for r in rows))
    return batch


class PairStream(PackedStream):
    """Rows of whole pairs from a weighted mix of shard sources of preference samples.

    `modality="text"` keeps only text-only pairs (what a text reward model can read); "vision" keeps all.
    """

    def __init__(self, sources: dict, processor, seq_len: int, pack_buffer: int, modality: str, **stream_args):
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        super().__init__(sources, processor, seq_len, pack_buffer, **stream_args)
        self.modality = modality

    def pairs(self) -> Iterator[Pair]:
        """Encoded pairs in stream order; samples the modality drops pass their skip counts on."""
        carried, dropped, filtered = 0, Counter(), 0
        for sample in self.samples:
            carried += sample.get("skipped_before", 0)
            dropped.update(sample.get("dropped_before", {}))
            if self.modality == "text" and not is_text_only(sample):
                filtered += 1
                if filtered >= MAX_FILTERED_IN_A_ROW:
                    raise ValueError(f"{filtered} preference samples in a row have images or videos; a text reward "
                                     "model needs text-only pairs in its sources")
                continue
            pair = encode_pair(sample, self.processor)
            pair.skipped, pair.dropped = carried, dropped
            carried, dropped, filtered = 0, Counter(), 0
            yield pair

    def __iter__(self):
        return pack_rows(self.pairs(), self.seq_len, self.pack_buffer)


def pairs_in(batch: dict) -> int:
    return int(batch["pairs"])


def with_window_pairs(batches: Iterable[dict], accumulate: int) -> Iterator[dict]:
    """`with_window` of pairs (`window_pairs`): the pairs of all `accumulate` batches of its optimizer step."""
    return with_window(batches, accumulate, "window_pairs", pairs_in)


class PreferenceDataModule(ShardDataModule):
    """Training batches of preference pairs for a reward-model stage.

    Takes ShardDataModule's arguments (the sources in `mix` must hold preference samples) plus `modality`:
    "vision" trains on every pair, "text" on the text-only ones. A batch is `collate_rows`'s, with `pairs`
    and `window_pairs` (the pairs of its optimizer step) added.
    """

    def __init__(self, *args, modality: str = "vision", **kwargs):
        super().__init__(*args, **kwargs)
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.modality = modality

    collate = staticmethod(collate_pairs)
    window = staticmethod(with_window_pairs)

    def dataset(self, sources: dict) -> PairStream:
        return PairStream(sources, self.processor, self.seq_len, self.pack_buffer, self.modality, seed=self.seed,
                          shuffle_buffer=self.shuffle_buffer, video_fps=self.video_fps, max_frames=self.max_frames)

    def lengths(self, sample: dict) -> tuple[int, int]:
        """(tokens, image and video tokens) of a sample's pair as `PairStream` packs it (`check_rows_fit`)."""
        pair = encode_pair(sample, self.processor)
        media = sum(int((e.mm_token_type_ids > 0).sum()) for e in (pair.chosen, pair.rejected))
        return len(pair), media
