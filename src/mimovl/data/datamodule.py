"""The LightningDataModule: shard streams -> encoded samples -> packed rows -> batches.

Resuming reads nothing twice. The batches come from torchdata's StatefulDataLoader over a `PackedStream`, whose
state is the stream's position in each worker: the mixed stream's (`mimovl.data.stream`: shard and byte offset per
source, the shuffle buffers' held samples by offset, the random states) and the packer's (its held samples by
origin, its counts). `TrainBatches` notes the loader's state at the start of every accumulation window, and the
checkpoint keeps the one at the batches trained so far, for every rank (`mimovl.data.resume`). A resumed run hands
it back to the loader: each worker re-reads only the samples its buffers held (the shuffle buffers' as bytes; the
packer's, and one of lookahead, decoded and encoded again) and goes on reading where it stopped, so what resuming
costs does not grow with the steps done, and the batches are the uninterrupted run's.

A checkpoint without a position (written before positions were saved), or one whose data settings differ from
this run's (mix, shards, seed, buffers, seq_len, workers, world size), falls back to what every resume did before:
the stream is deterministic for a given seed, world size and worker count, so the resumed run reads it again and
skips the batches already trained on, saying so in one log line (a warning, naming what changed, for changed
settings). That costs one pass of reading and packing over the skipped part.

Before any worker starts, `check_rows_fit` reads a few samples of every source in the main process and refuses
(UsageError naming stage.seq_len) a row length that hardly any of them fits.
"""

import functools
import itertools
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator

import lightning.pytorch as pl
from torch.utils.data import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from mimovl.data.encode import Encoded, encode
from mimovl.data.packing import Packer, Row, collate_rows, with_window_tokens
from mimovl.data.resume import find_position, save_position, stream_config
from mimovl.data.split import shortest_row
from mimovl.data.stream import MixedIterator, mixed_stream
from mimovl.data.synthetic import ensure_synthetic
from mimovl.errors import UsageError

log = logging.getLogger(__name__)

# torchdata 0.11 calls torch.set_vital, which torch 2.13 deprecates, on every iteration: not the user's concern.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


class PackedStream(IterableDataset):
    """Packed rows from a weighted mix of shard sources (runs inside each DataLoader worker).

    Its position is its state (`state_dict`, `load_state_dict` before `iter`; StatefulDataLoader keeps one per
    worker): the mixed stream's and the packer's, see the module docstring.
    """

    def __init__(self, sources: dict, processor, seq_len: int, pack_buffer: int, **stream_args):
        # Built here, in the main process, so a bad shard pattern fails before any worker starts.
        self.samples = mixed_stream(sources, **stream_args)
        self.processor, self.seq_len, self.pack_buffer = processor, seq_len, pack_buffer
        self._packer: Packer | None = None
        self._resume: dict | None = None  # the packer's saved state, for the next iter

    def __iter__(self) -> Iterator[Row]:
        stream = iter(self.samples)
        self._packer = Packer(self.seq_len, self.pack_buffer)
        if self._resume is not None:
            state, self._resume = self._resume, None
            self._packer.load_state_dict(
                state, lambda origins: {o: self.encode(s) for o, s in stream.fetch(origins).items()})
        return self._packer.rows(self.items(stream))

    def items(self, stream: MixedIterator) -> Iterator[tuple[tuple, Encoded]]:
        """(origin, encoded sample) of every sample of the stream, what the packer holds."""
        return ((sample["origin"], self.encode(sample)) for sample in stream)

    def encode(self, sample: dict) -> Encoded:
        return encode(sample, self.processor)

    def settings(self) -> dict:
        """What the rows depend on besides the mixed stream (`mimovl.data.resume.stream_config`)."""
        return {"seq_len": self.seq_len, "pack_buffer": self.pack_buffer}

    def state_dict(self) -> dict:
        return {"stream": self.samples.state_dict(),
                "packer": self._packer.state_dict() if self._packer is not None else self._resume}

    def load_state_dict(self, state: dict) -> None:
        self.samples.load_state_dict(state["stream"])
        self._resume = state["packer"]


class TrainBatches:
    """Iterates a StatefulDataLoader for training and tags each batch with its accumulation window's total
    (`window`: `with_window_tokens`, or pairs for reward models). The one batch iterator of the cross-entropy and
    preference DataModules.

    The loader starts at `resume`, its state after the `trained` batches already trained on (exact, and nothing is
    read twice), or without one from its beginning, dropping the first `trained` batches (exact too, by reading
    them again); once. `positions` holds the loader's state at the start of the last few accumulation windows,
    keyed by the batches read before it: Lightning fetches one batch ahead, which reads a whole window ahead, so
    the state after the batches trained so far is that of an earlier window.
    """

    KEPT = 4  # window starts whose positions are kept

    def __init__(self, loader: StatefulDataLoader, accumulate: int, resume: dict | None = None, trained: int = 0,
                 window: Callable[[Iterable[dict], int], Iterator[dict]] = with_window_tokens):
        self.loader, self.accumulate, self.window = loader, accumulate, window
        self.resume, self.trained = resume, trained
        self.positions: dict[int, dict] = {}

    def __iter__(self):
        # A generator, so the resume happens on the first batch drawn: Lightning calls iter() once just to
        # check the loader is iterable, and that call must not use it up.
        resume, trained, self.resume, self.trained = self.resume, self.trained, None, 0
        if resume is not None:
            log.info("resuming the data stream at its saved position (%d batches trained): nothing is read again",
                     trained)
            self.loader.load_state_dict(resume)
        elif trained:
            log.info("resuming the data stream: skipping %d batches already trained on", trained)
        batches = itertools.islice(iter(self.loader), 0 if resume is not None else trained, None)
        try:
            yield from self.window(self._noting_positions(batches, trained), self.accumulate)
        finally:
            # StatefulDataLoader keeps its iterator, and so its workers, as long as the loader lives; they hold
            # what the training process had open (its run lock among them), so they end with this iteration.
            iterator, self.loader._iterator = self.loader._iterator, None
            if hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()

    def _noting_positions(self, batches: Iterator[dict], read: int) -> Iterator[dict]:
        while True:
            if read % self.accumulate == 0:
                self.positions[read] = self.loader.state_dict()
                for old in list(self.positions)[:-self.KEPT]:
                    del self.positions[old]
            batch = next(batches, None)
            if batch is None:
                return
            read += 1
            yield batch


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
        self.batches_trained = 0  # by the checkpointed run (checkpointed as batches_consumed)
        self.saved_stream: dict | None = None  # the checkpoint's stream position (`mimovl.data.resume`)
        self.resumed = False
        self._batches: TrainBatches | None = None
        self._stream_config: dict | None = None

    def prepare_data(self) -> None:
        if self.generate:
            ensure_synthetic(self.root, **self.generate)

    def train_dataloader(self) -> TrainBatches:
        sources = {
            name: {"urls": self.sources[name], "weight": weight}
            for name, weight in self.mix.items() if weight > 0
        }
        check_rows_fit(sources, self.seq_len, self.lengths, video_fps=self.video_fps, max_frames=self.max_frames)
        dataset = self.dataset(sources)
        loader = StatefulDataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers,
            collate_fn=functools.partial(self.collate, seq_len=self.seq_len,
                                         pad_id=self.processor.tokenizer.pad_token_id),
            persistent_workers=False,
        )
        self._stream_config = stream_config(dataset.samples, num_workers=self.num_workers, **dataset.settings())
        trained, resume = self.batches_trained, None
        if self.resumed:
            resume = find_position(self.saved_stream, self._stream_config,
                                   f"skipping the {trained} batches already trained on, reading them again")
        self._batches = TrainBatches(loader, self.trainer.accumulate_grad_batches, resume, trained, self.window)
        return self._batches

    # What a subclass swaps (PreferenceDataModule: rows of whole pairs, counted in pairs).
    collate = staticmethod(collate_rows)
    window = staticmethod(with_window_tokens)

    def dataset(self, sources: dict) -> PackedStream:
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
        """The batches trained so far and, for every rank, the loader's state after them (a collective)."""
        consumed = self.trainer.global_step * self.trainer.accumulate_grad_batches
        if self._batches is None:
            return {"batches_consumed": consumed, "stream": self.saved_stream}
        stream = save_position(self._stream_config, self._batches.positions.get(consumed))
        return {"batches_consumed": consumed, "stream": stream}

    def load_state_dict(self, state: dict) -> None:
        self.batches_trained = int(state.get("batches_consumed", 0))
        self.saved_stream, self.resumed = state.get("stream"), True
