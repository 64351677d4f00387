"""The prompt DataModule of the RL stage: batches of `Prompt`s from shard sources, and held-out prompts.

Training batches are dicts {"prompts": k}; the rollout callback draws the k prompts (`draw(k)`) when the step
starts and turns them into a training batch; it draws more from the same stream to refill a batch whose groups
dynamic sampling dropped. The stream is read in this process (no DataLoader workers): forking a worker
after the in-process vLLM engine has started hangs the worker.
"""

import logging
from collections import Counter
from collections.abc import Callable, Iterator

import lightning.pytorch as pl

from mimovl.data.stream import mixed_stream
from mimovl.data.synthetic import ensure_synthetic
from mimovl.errors import UsageError
from mimovl.rl.prompts import Prompt, to_prompt

log = logging.getLogger(__name__)


class PromptBatches:
    """Iterates {"prompts": k} batches (infinite): each asks the rollout callback to draw k prompts when its
    step starts.

    The prompts are drawn then, not here, because Lightning fetches the next batch before the current step runs:
    prompts drawn at fetch time would come before the current step's refills in the stream, and a checkpoint
    would count prompts that no step has trained on yet, so a resumed run would not see the same prompts.
    """

    def __init__(self, size: int):
        self.size = size

    def __iter__(self):
        while True:
            yield {"prompts": self.size}


class PromptDataModule(pl.LightningDataModule):
    """RL prompts.

    Args:
        sources: source name -> shard pattern (data.sources); `mix` picks the sources and their weights (None:
            every source, weight 1).
        heldout: source name -> shard pattern of held-out prompts, scored before and after training.
        prompts_per_step: prompts per rank in each batch.
        heldout_per_kind: held-out prompts kept per kind (task, or open_text / open_vision) on each rank.
        generate / heldout_generate: settings for `ensure_synthetic` under `root` (None for real data).
        processor: the policy's processor (train.py passes it).
    """

    def __init__(self, sources: dict, mix: dict, heldout: dict, prompts_per_step: int, heldout_per_kind: int = 32,
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
        self.prompts_per_step, self.heldout_per_kind = prompts_per_step, heldout_per_kind
        self.seed, self.shuffle_buffer, self.video_fps, self.max_frames = seed, shuffle_buffer, video_fps, max_frames
        self.root, self.generate, self.heldout_generate = root, generate, heldout_generate
        self.processor = processor  # the policy's processor; the rollout callback templates prompts with it
        self.accept: Callable[[Prompt], bool] = lambda prompt: True  # set by the rollout callback
        self.consumed = 0  # prompts drawn so far (checkpointed: a resumed run skips them)
        self.rejected = Counter()  # prompts skipped because nothing could score them, by kind
        self._prompts: Iterator[Prompt] | None = None

    def prepare_data(self) -> None:
        if self.generate:
            ensure_synthetic(self.root, **self.generate)
        if self.heldout_generate:
            ensure_synthetic(self.root, split="heldout", **self.heldout_generate)

    def train_dataloader(self) -> PromptBatches:
        return PromptBatches(self.prompts_per_step)

    def _stream(self) -> Iterator[Prompt]:
        samples = mixed_stream(self.sources, seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                               video_fps=self.video_fps, max_frames=self.max_frames)
        for sample in samples:
            prompt = to_prompt(sample)
            if prompt is None:
                continue
            if not self.accept(prompt):
                self.rejected[prompt.kind] += 1
                continue
            yield prompt

    def draw(self, k: int) -> list[Prompt]:
        """The next `k` prompts of the stream."""
        if self._prompts is None:
            self._prompts = self._stream()
            for _ in range(self.consumed):  # exact resume: the stream is deterministic per seed and rank
                next(self._prompts)
        prompts = [next(self._prompts) for _ in range(k)]
        self.consumed += k
        return prompts

    def heldout(self) -> list[Prompt]:
        """Up to `heldout_per_kind` prompts of each kind from the held-out sources (this rank's share)."""
        if not self.heldout_sources:
            return []
        samples = mixed_stream(self.heldout_sources, seed=self.seed, shuffle_buffer=0, resample=False,
                               video_fps=self.video_fps, max_frames=self.max_frames, config_key="data.heldout")
        kept, per_kind = [], Counter()
        for sample in samples:
            prompt = to_prompt(sample)
            if prompt is None or not self.accept(prompt) or per_kind[prompt.kind] >= self.heldout_per_kind:
                continue
            per_kind[prompt.kind] += 1
            kept.append(prompt)
        return kept

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state.get("consumed", 0))
