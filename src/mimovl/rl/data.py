"""The prompt DataModule of the RL stage: a stream of `Prompt`s from shard sources, and held-out prompts.

Training batches are `RolloutRequest`s; the rollout callback draws the step's prompts (`draw(k, accept)`) when
the step starts, runs the RL step on them (drawing more from the same stream to refill groups dynamic sampling
dropped) and answers the request with it. The stream is read in this process (no DataLoader workers): forking a
worker after the in-process vLLM engine has started hangs the worker.
"""

import logging
from collections import Counter
from collections.abc import Callable, Iterator

import lightning.pytorch as pl

from mimovl.data.resume import find_position, save_position, stream_config
from mimovl.data.stream import MixedStream, mixed_stream
from mimovl.data.synthetic import ensure_synthetic
from mimovl.errors import UsageError
from mimovl.generate.prompts import Prompt, to_prompt

log = logging.getLogger(__name__)


class RolloutRequest:
    """One RL training batch: a request the rollout callback answers with the step's rollouts (`answer`) when
    the step starts, and the module trains on (`rollout()`).

    The prompts are drawn then, not when Lightning fetches the batch: Lightning fetches the next batch before the
    current step runs, so prompts drawn at fetch time would come before the current step's refills in the
    stream, a checkpoint would count prompts no step has trained on yet, and the rollouts would come from the
    policy of one update before.
    """

    def __init__(self):
        self._step = None

    def answer(self, step) -> None:
        """Called once per request, by the rollout callback, with the step's `mimovl.rl.step.Step`."""
        self._step = step

    def rollout(self):
        """The `Step` this request was answered with."""
        if self._step is None:
            raise RuntimeError("no rollouts for this batch: stage=rl needs the rollout callback "
                               "(stage.callbacks.rollout, mimovl.rl.callback.RolloutCallback)")
        return self._step


class PromptBatches:
    """Iterates `RolloutRequest`s (infinite), one per step."""

    def __iter__(self):
        while True:
            yield RolloutRequest()


class PromptDataModule(pl.LightningDataModule):
    """RL prompts.

    Args:
        sources: source name -> shard pattern (data.sources); `mix` picks the sources and their weights (None:
            every source, weight 1).
        heldout: source name -> shard pattern of held-out prompts, scored before and after training.
        heldout_per_kind: held-out prompts kept per kind (task, or open_text / open_vision) on each rank.
        generate / heldout_generate: settings for `ensure_synthetic` under `root` (None for real data).
        processor: the policy's processor (train.py passes it).
    """

    def __init__(self, sources: dict, mix: dict, heldout: dict, heldout_per_kind: int = 32,
                 seed: int = 0, shuffle_buffer: int = 200, video_fps: float = 2.0, max_frames: int = 256,
                 root: str | None = None, generate: dict | None = None, heldout_generate: dict | None = None,
                 processor=None):
        super().__init__()
        mix = {name: 1.0 for name in sources} if mix is None else mix
        unknown = sorted(name for name, w in mix.items() if w > 0 and name not in sources)
        if unknown:
            raise UsageError(f"stage.mix names sources that are not configured: {unknown} (defined: "
                             f"{sorted(sources)}); add them to data.sources / data.heldout or drop them from the mix")
        self.sources = {name: {"urls": sources[name], "weight": w} for name, w in mix.items() if w > 0}
        self.heldout_sources = {n: {"urls": heldout[n], "weight": 1.0} for n in self.sources if n in heldout}
        self.heldout_per_kind = heldout_per_kind
        self.seed, self.shuffle_buffer, self.video_fps, self.max_frames = seed, shuffle_buffer, video_fps, max_frames
        self.root, self.generate, self.heldout_generate = root, generate, heldout_generate
        self.processor = processor  # the policy's processor; the rollout callback templates prompts with it
        self.consumed = 0  # prompts read from the stream so far (checkpointed)
        self.rejected = Counter()  # prompts skipped because nothing could score them, by kind
        self.saved_stream: dict | None = None  # the checkpoint's stream position (`mimovl.data.resume`)
        self.resumed = False
        self._samples: MixedStream | None = None
        self._prompts: Iterator[Prompt] | None = None

    def prepare_data(self) -> None:
        if self.generate:
            ensure_synthetic(self.root, **self.generate)
        if self.heldout_generate:
            ensure_synthetic(self.root, split="heldout", **self.heldout_generate)

    def train_dataloader(self) -> PromptBatches:
        return PromptBatches()

    def _stream(self) -> Iterator[Prompt]:
        """The prompt stream, from the saved position when resuming (else from the start, skipping what was
        consumed: the stream is deterministic per seed and rank)."""
        self._samples = mixed_stream(self.sources, seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                                     video_fps=self.video_fps, max_frames=self.max_frames)
        position = None
        if self.resumed:
            position = find_position(self.saved_stream, stream_config(self._samples),
                                     f"skipping the {self.consumed} prompts already consumed, reading them again")
            self._samples.load_state_dict(position)
        prompts = (prompt for prompt in map(to_prompt, self._samples) if prompt is not None)
        if position is None:
            for _ in range(self.consumed):
                next(prompts)
        else:
            log.info("resuming the prompt stream at its saved position (%d prompts consumed): nothing is read "
                     "again", self.consumed)
        return prompts

    def draw(self, k: int, accept: Callable[[Prompt], bool] = lambda prompt: True) -> list[Prompt]:
        """The next `k` prompts of the stream that `accept` takes (the router's `can_score`: a prompt nothing
        can score is skipped and counted in `rejected`)."""
        if self._prompts is None:
            self._prompts = self._stream()
        prompts = []
        while len(prompts) < k:
            prompt = next(self._prompts)
            self.consumed += 1
            if accept(prompt):
                prompts.append(prompt)
            else:
                self.rejected[prompt.kind] += 1
        return prompts

    def heldout(self, accept: Callable[[Prompt], bool] = lambda prompt: True) -> list[Prompt]:
        """Up to `heldout_per_kind` prompts of each kind that `accept` takes from the held-out sources (this
        rank's share)."""
        if not self.heldout_sources:
            return []
        samples = mixed_stream(self.heldout_sources, seed=self.seed, shuffle_buffer=0, resample=False,
                               video_fps=self.video_fps, max_frames=self.max_frames, config_key="data.heldout")
        kept, per_kind = [], Counter()
        for sample in samples:
            prompt = to_prompt(sample)
            if prompt is None or not accept(prompt) or per_kind[prompt.kind] >= self.heldout_per_kind:
                continue
            per_kind[prompt.kind] += 1
            kept.append(prompt)
        return kept

    def state_dict(self) -> dict:
        """The prompts consumed and, for every rank, the stream's position after them (a collective)."""
        if self._samples is None:  # nothing drawn since the start or the resume
            return {"consumed": self.consumed, "stream": self.saved_stream}
        return {"consumed": self.consumed,
                "stream": save_position(stream_config(self._samples), self._samples.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state.get("consumed", 0))
        self.saved_stream, self.resumed = state.get("stream"), True
