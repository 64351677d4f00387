"""The LightningDataModule: shard streams -> encoded samples -> packed rows -> batches.

The stream is deterministic for a given seed, world size and worker count, so an exact resume re-reads it and
skips the batches the checkpointed run already trained on (`state_dict` records how many). That costs one
pass of reading and packing over the skipped part, and no model compute.

Before any worker starts, `check_rows_fit` reads a few samples of every source in the main process and refuses
(UsageError naming stage.seq_len) a row length that hardly any of them fits.
"""

import functools
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator

import lightning.pytorch as pl
from torch.utils.data import DataLoader, IterableDataset

from mimovl.data.encode import encode
from mimovl.data.packing import collate_rows, pack_rows, with_window_tokens
from mimovl.data.split import shortest_row
from mimovl.data.stream import mixed_stream
from mimovl.data.synthetic import ensure_synthetic
from mimovl.errors import UsageError

log = logging.getLogger(__name__)


class PackedStream(IterableDataset):
    """Packed rows from a weighted mix of shard sources (runs inside each DataLoader worker)."""

    def __init__(self, sources: dict, processor, seq_len: int, pack_buffer: int, **stream_args):
        # Built here, in the main process, so a bad shard pattern fails before any worker starts.
        self.samples = mixed_stream(sources, **stream_args)
        self.processor, self.seq_len, self.pack_buffer = processor, seq_len, pack_buffer

    def __iter__(self):
        encoded = (encode(sample, self.processor) for sample in self.samples)
        return pack_rows(encoded, self.seq_len, self.pack_buffer)


class TrainBatches:
    """Iterates a DataLoader for training: drops its first `skip` batches once (exact resume), then tags each
    batch with its accumulation window's total (`window`: `with_window_tokens`, or pairs for reward models).
    The one batch iterator of the cross-entropy and preference DataModules."""

    def __init__(self, loader: DataLoader, accumulate: int, skip: int,
                 window: Callable[[Iterable[dict], int], Iterator[dict]] = with_window_tokens):
        self.loader, self.accumulate, self.skip, self.window = loader, accumulate, skip, window

    def __iter__(self):
        # A generator, so the skip happens on the first batch drawn: Lightning calls iter() once just to
        # check the loader is iterable, and that call must not use up the skip.
        skip, self.skip = self.skip, 0
        if skip:
            log.info("resuming the data stream: skipping %d batches already trained on", skip)
        yield from self.window(itertools.islice(iter(self.loader), skip, None), self.accumulate)


# Samples per source that check_rows_fit reads, and the share of them that must fit in a row.
PROBE_SAMPLES = 8
MIN_FIT_SHARE = 0.25


def check_rows_fit(sources: dict, seq_len: int, lengths: Callable[[dict], tuple[int, int]], **stream_args) -> None:
    """A UsageError when fewer than MIN_FIT_SHARE of a source's first PROBE_SAMPLES samples fit in a packed row
    of seq_len tokens: training would drop (nearly) all of that source as too long, and would only say so after
    MAX_TOO_LONG_IN_A_ROW samples, from inside a DataLoader worker. Run in the main process before training.

    `lengths(sample)` gives (tokens, image and video tokens) of a sample as packed (`ShardDataModule.lengths`). Every
    rank reads the same samples (the rank-0 split of a single pass), so all ranks reach the same verdict.
    Logs a warning when some of the probed samples do not fit.
    """
    for name, spec in sources.items():
        stream = mixed_stream({name: spec}, seed=0, shuffle_buffer=0, resample=False, rank=0, world_size=1,
                              **stream_args)
        sizes = [lengths(sample) for sample in itertools.islice(stream, PROBE_SAMPLES)]
        fit = sum(tokens <= seq_len for tokens, _ in sizes)
        if fit == len(sizes):
            continue
        longest = max(tokens for tokens, _ in sizes)
        if fit >= MIN_FIT_SHARE * len(sizes):
            log.warning("stage.seq_len=%d: %d of the first %d %r samples are longer (up to %d tokens) and will be "
                        "dropped as too long", seq_len, len(sizes) - fit, len(sizes), name, longest)
            continue
        tokens, media = min(sizes)
        if media > seq_len:
            raise UsageError(
                f"stage.seq_len={seq_len} is smaller than the images or videos of one {name!r} sample "
                f"({media} tokens): raise stage.seq_len to at least {longest} (fits the first {len(sizes)} samples), "
                "or lower the processor's max_pixels (or data.max_frames for video)")
        raise UsageError(
            f"stage.seq_len={seq_len}: only {fit} of the first {len(sizes)} {name!r} samples fit in a packed row "
            f"(they take {tokens} to {longest} tokens), so training would drop nearly all of them as too long: "
            f"raise stage.seq_len to at least {longest}")


class ShardDataModule(pl.LightningDataModule):
    """Training batches for one stage.

    Args:
        sources: source name -> shard pattern (brace and glob patterns).
        mix: source name -> sampling weight; only these sources are read.
        processor: the model's Qwen2.5-VL processor.
        seq_len, batch_size: packed row length and rows per device per micro-step.
        generate: settings for `ensure_synthetic` under `root`, or None for real data.
    """

    def __init__(
        self, sources: dict, mix: dict, processor, seq_len: int, batch_size: int, seed: int = 0,
        num_workers: int = 1, shuffle_buffer: int = 200, pack_buffer: int = 64, video_fps: float = 2.0,
        max_frames: int = 256, root: str | None = None, generate: dict | None = None,
    ):
        super().__init__()
        unknown = sorted(name for name, weight in mix.items() if weight > 0 and name not in sources)
        if unknown:
            raise UsageError(f"stage.mix names sources that data.sources does not define: {unknown} (defined: "
                             f"{sorted(sources)}); add them with +data.sources.NAME=PATTERN or drop them from the mix")
        self.sources, self.mix, self.processor = dict(sources), dict(mix), processor
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.num_workers, self.shuffle_buffer, self.pack_buffer = num_workers, shuffle_buffer, pack_buffer
        self.video_fps, self.max_frames = video_fps, max_frames
        self.root, self.generate = root, generate
        self.batches_to_skip = 0

    def prepare_data(self) -> None:
        if self.generate:
            ensure_synthetic(self.root, **self.generate)

    def train_dataloader(self) -> TrainBatches:
        sources = {
            name: {"urls": self.sources[name], "weight": weight}
            for name, weight in self.mix.items() if weight > 0
        }
        check_rows_fit(sources, self.seq_len, self.lengths, video_fps=self.video_fps, max_frames=self.max_frames)
        loader = DataLoader(
            self.dataset(sources), batch_size=self.batch_size, num_workers=self.num_workers,
            collate_fn=functools.partial(self.collate, seq_len=self.seq_len,
                                         pad_id=self.processor.tokenizer.pad_token_id),
            persistent_workers=False,
        )
        return TrainBatches(loader, self.trainer.accumulate_grad_batches, self.batches_to_skip, self.window)

    # What a subclass swaps (PreferenceDataModule: rows of whole pairs, counted in pairs).
    collate = staticmethod(collate_rows)
    window = staticmethod(with_window_tokens)

    def dataset(self, sources: dict) -> IterableDataset:
        """The packed-row stream of `sources` ({name: {urls, weight}})."""
        return PackedStream(sources, self.processor, self.seq_len, self.pack_buffer, seed=self.seed,
                            shuffle_buffer=self.shuffle_buffer, video_fps=self.video_fps,
                            max_frames=self.max_frames)

    def lengths(self, sample: dict) -> tuple[int, int]:
        """(tokens a row needs, image and video tokens) of a sample as `dataset` packs it (`check_rows_fit`): a
        document longer than a row is split, so it needs only its longest image (`shortest_row`)."""
        encoded = encode(sample, self.processor)
        return shortest_row(encoded), int((encoded.mm_token_type_ids > 0).sum())

    def state_dict(self) -> dict:
        trainer = self.trainer
        return {"batches_consumed": trainer.global_step * trainer.accumulate_grad_batches}

    def load_state_dict(self, state: dict) -> None:
        self.batches_to_skip = int(state.get("batches_consumed", 0))
