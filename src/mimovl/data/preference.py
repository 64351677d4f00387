"""Preference pairs for Bradley-Terry reward models: training batches whose rows hold whole (chosen, rejected)
pairs (`mimovl.data.pairs` encodes each pair)."""

import logging
from collections import Counter
from collections.abc import Iterable, Iterator

from mimovl.data.datamodule import PackedStream, ShardDataModule
from mimovl.data.packing import with_window
from mimovl.data.pairs import Pair, collate_pairs, encode_pair, is_text_only
from mimovl.data.schema import MODALITIES
from mimovl.data.stream import MixedIterator

log = logging.getLogger(__name__)

# Samples in a row that the modality filter drops before the stream is declared empty of usable pairs.
MAX_FILTERED_IN_A_ROW = 10_000


class PairStream(PackedStream):
    """Rows of whole pairs from a weighted mix of shard sources of preference samples.

    `modality="text"` keeps only text-only pairs (what a text reward model can read); "vision" keeps all.
    """

    def __init__(self, sources: dict, processor, seq_len: int, pack_buffer: int, modality: str, **stream_args):
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        super().__init__(sources, processor, seq_len, pack_buffer, **stream_args)
        self.modality = modality

    def items(self, stream: MixedIterator) -> Iterator[tuple[tuple, Pair]]:
        """(origin, encoded pair) in stream order; samples the modality drops pass their skip counts on."""
        carried, dropped, filtered = 0, Counter(), 0
        for sample in stream:
            carried += sample.get("skipped_before", 0)
            dropped.update(sample.get("dropped_before", {}))
            if self.modality == "text" and not is_text_only(sample):
                filtered += 1
                if filtered >= MAX_FILTERED_IN_A_ROW:
                    raise ValueError(f"{filtered} preference samples in a row have images or videos; a text reward "
                                     "model needs text-only pairs in its sources")
                continue
            pair = self.encode(sample)
            pair.skipped, pair.dropped = carried, dropped
            carried, dropped, filtered = 0, Counter(), 0
            yield sample["origin"], pair

    def encode(self, sample: dict) -> Pair:
        return encode_pair(sample, self.processor)

    def settings(self) -> dict:
        return {**super().settings(), "modality": self.modality}


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
