"""Preference pairs for Bradley-Terry reward models: training batches whose rows hold whole (chosen, rejected)
pairs (`mimovl.data.pairs` encodes each pair), and the same batches of held-out pairs to score after training."""

import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Iterator

from mimovl.data.datamodule import PackedStream, ShardDataModule
from mimovl.data.packing import Packer, with_window
from mimovl.data.pairs import Pair, collate_pairs, encode_pair, is_text_only
from mimovl.data.schema import MODALITIES
from mimovl.data.stream import MixedIterator
from mimovl.data.synthetic import ensure_synthetic
from mimovl.errors import UsageError, require

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

    Held-out pairs (`heldout_batches`, scored by `mimovl.stages.reward_model.RewardModule` after training):
    `heldout` is their shard pattern (None: none), `heldout_pairs` how many of the modality's pairs to take at
    most, `heldout_generate` settings for `ensure_synthetic(root, split="heldout")` (None for real data).
    """

    def __init__(self, *args, modality: str = "vision", heldout: str | list | None = None, heldout_pairs: int = 256,
                 heldout_generate: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        require(isinstance(heldout_pairs, int) and heldout_pairs >= 0, "stage.heldout_pairs", heldout_pairs,
                "must be an integer >= 0 (0 scores no held-out pairs)")
        self.modality = modality
        self.heldout, self.heldout_pairs, self.heldout_generate = heldout, heldout_pairs, heldout_generate

    def prepare_data(self) -> None:
        super().prepare_data()
        if self.heldout and self.heldout_generate:
            ensure_synthetic(self.root, split="heldout", **self.heldout_generate)

    collate = staticmethod(collate_pairs)
    window = staticmethod(with_window_pairs)

    def dataset(self, sources: dict) -> PairStream:
        return PairStream(sources, self.processor, self.seq_len, self.pack_buffer, self.modality, seed=self.seed,
                          shuffle_buffer=self.shuffle_buffer, video_fps=self.video_fps, max_frames=self.max_frames)

    def heldout_batches(self) -> list[dict]:
        """The first `heldout_pairs` held-out pairs of the modality, in shard order, packed and collated as training
        batches are (`batch_size` rows of `seq_len`). The same list on every rank, so each can score its share.
        [] (and a warning) when there is no held-out source, its pattern matches no shard, or it holds no pair."""
        if not self.heldout or not self.heldout_pairs:
            return []
        try:
            stream = PairStream({"heldout": {"urls": self.heldout, "weight": 1.0}}, self.processor, self.seq_len,
                                self.pack_buffer, self.modality, seed=self.seed, shuffle_buffer=0, resample=False,
                                rank=0, world_size=1, video_fps=self.video_fps, max_frames=self.max_frames,
                                config_key="stage")  # names stage.heldout in its error
        except UsageError as error:
            log.warning("no held-out pairs to score: %s", error)
            return []
        pairs = itertools.islice(stream.items(iter(stream.samples)), self.heldout_pairs)
        rows = list(Packer(self.seq_len, self.pack_buffer).rows(pairs))
        if not rows:
            log.warning("no held-out pairs to score: stage.heldout=%r holds no %s pairs", self.heldout,
                        "text-only" if self.modality == "text" else "preference")
        pad_id = self.processor.tokenizer.pad_token_id
        return [self.collate(rows[i : i + self.batch_size], self.seq_len, pad_id)
                for i in range(0, len(rows), self.batch_size)]

    def lengths(self, sample: dict) -> tuple[int, int]:
        """(tokens, image and video tokens) of a sample's pair as `PairStream` packs it (`check_rows_fit`)."""
        pair = encode_pair(sample, self.processor)
        media = sum(int((e.mm_token_type_ids > 0).sum()) for e in (pair.chosen, pair.rejected))
        return len(pair), media
