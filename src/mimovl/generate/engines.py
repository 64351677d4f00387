"""Rollout engines: sample G responses per prompt from the current policy.

Both engines take the same calls:

    engine.sync(named_tensors)                      # the policy's current weights (an iterable of (name, tensor))
    groups = engine.generate(prompts, sampling, processor)     # one list of `Completion`s per prompt
    engine.needs_weights                            # False: it generates with the live policy, sync is a no-op
    engine.release()                                # the rollouts are done: free what the engine can (vLLM's
                                                    # sleep mode on GPUs, `rollout.sleep`), until it is next used

`VLLMRollout` runs vLLM in this process, beside training. It starts once, from an export of the starting
policy, and every `sync` loads the policy's current weights in place: milliseconds for a tiny model, where the
report restarts its engine for each update (benchmarks/rl_step.py measures both). Engines are kept per process
by what they serve (config, processor and engine settings), so later runs and tests in the same process reuse
one instead of paying the start again.
`HFRollout` calls transformers' `generate` on the live policy: nothing to sync, slower, no vLLM needed.

Under two or more ranks each rank rolls out its own prompts with its own vLLM engine ("external_launcher"
executor: one engine per training process, tensor parallel size 1); `HFRollout` is single-process.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mimovl.data.encode import encode_prompt, video_metadata
from mimovl.errors import UsageError
from mimovl.generate.prompts import Prompt, prompt_text

log = logging.getLogger(__name__)

# Files of an export that define what an engine serves. Weights are left out: every run syncs its own. (vLLM's
# "dummy" load format would spare the start-up read, but it also randomises buffers such as the rotary
# cos/sin cache, which no sync restores.)
SPEC_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "processor_config.json", "preprocessor_config.json",
              "video_preprocessor_config.json")


@dataclass
class Sampling:
    """Sampling settings of one generate call (temperature 0: greedy)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = 64  # None: up to the engine's context (vLLM only)
    seed: int | None = None


@dataclass
class Completion:
    """One sampled response: its token ids (the stop token included when it stopped), text, and whether it
    ended on a stop token rather than at max_new_tokens."""

    token_ids: list[int]
    text: str
    finished: bool


# What wrappers put in front of transformers' names: a LightningModule's `net.`, PackedVLM's `hf.`, torch.compile.
WRAPPER_PREFIXES = ("net.", "hf.", "_orig_mod.")


def hf_names(named_tensors: Iterable[tuple[str, torch.Tensor]]):
    """Weights under the names transformers gives them in memory (`model.*`, `lm_head.*`)."""
    for name, tensor in named_tensors:
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        yield name, tensor


_ENGINES: dict[str, object] = {}


def in_process_engine() -> None:
    """Keeps vLLM's engine core in this process: `sync` loads weights through the in-process model runner.

    vLLM V1 otherwise runs the engine core in a child process (its default), where the training process cannot
    reach the model. vLLM reads the variable when an engine starts, so setting it here, before `LLM(...)`,
    is enough; a caller's contrary setting is overridden, with a warning.
    """
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
        log.warning("VLLM_ENABLE_V1_MULTIPROCESSING=%s ignored: the rollout engine runs in the training process "
                    "so its weights can be synced in place", os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"])
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


# Keys that say where or with what a directory was written, not what it serves.
VOLATILE_KEYS = frozenset({"_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype"})


def _normalised(value):
    """A JSON value without VOLATILE_KEYS at any depth (the engine's dtype is a setting of its own)."""
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def _engine_key(spec_dir: Path, settings: dict) -> str:
    """What an engine serves: its settings, and the model's config and processor files (normalised)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in SPEC_FILES:
        path = spec_dir / name
        if not path.exists():
            continue
        content = path.read_bytes()
        if path.suffix == ".json":
            content = json.dumps(_normalised(json.loads(content)), sort_keys=True).encode()
        digest.update(name.encode() + content)
    return digest.hexdigest()


class VLLMRollout:
    """vLLM, in this process, serving the policy whose weights `sync` pushes.

    Args:
        spec_dir: a Qwen2.5-VL export; an engine serving the same config, processor and settings is reused.
        dtype: "float32" on CPU (so vLLM and transformers agree token for token); "bfloat16" on GPUs.
        max_model_len: prompt + response tokens the engine admits.
        limit_mm_per_prompt: images and videos one prompt may carry, e.g. {"image": 2, "video": 1}.
        gpu_memory_utilization: the engine's share of GPU memory (colocated with training: keep it small).
        enforce_eager: no CUDA graphs (faster start; needed on CPU).
        seed: the engine's base seed (plus the rank, when distributed).
        mm_processor_kwargs: settings for vLLM's multimodal processor, e.g. {"max_pixels": 3211264}.
        distributed: one engine per training rank ("external_launcher"), for multi-process runs.
        cpu_kv_cache_gib: the KV cache of an engine on CPU, in GiB (unset, vLLM sizes it from the machine's free
            memory, and a second engine beside it is killed for memory); GPUs use gpu_memory_utilization.
        sleep: GPUs only: vLLM's sleep mode. `release()` (after the step's rollouts) offloads the weights to the
            CPU and frees the KV cache while the policy trains; the next `sync` or `generate` wakes the engine
            first, and `sync` then loads the new weights.
    """

    needs_weights = True  # a copy of the policy: every step's weights must be synced into it

    def __init__(self, spec_dir, dtype: str = "float32", max_model_len: int = 2048,
                 limit_mm_per_prompt: dict | None = None, gpu_memory_utilization: float = 0.3,
                 enforce_eager: bool = True, seed: int = 0, mm_processor_kwargs: dict | None = None,
                 distributed: bool = False, cpu_kv_cache_gib: float | None = 1.0, sleep: bool = False):
        if sleep and not torch.cuda.is_available():
            raise UsageError("rollout.sleep=true needs a GPU (vLLM's sleep mode frees GPU memory; a CPU engine "
                             "has none to free): set rollout.sleep=false")
        spec_dir = Path(spec_dir)
        settings = {
            "dtype": dtype, "max_model_len": max_model_len, "limit_mm_per_prompt": dict(limit_mm_per_prompt or {}),
            "gpu_memory_utilization": gpu_memory_utilization, "enforce_eager": enforce_eager, "seed": seed,
            "distributed": distributed, "mm_processor_kwargs": dict(mm_processor_kwargs or {}),
            "cpu_kv_cache_gib": cpu_kv_cache_gib, "sleep": sleep,
        }
        key = _engine_key(spec_dir, settings)
        if key not in _ENGINES:
            _ENGINES[key] = self._start(spec_dir, settings)
        self.llm = _ENGINES[key]

    @classmethod
    def from_policy(cls, policy, export, distributed: bool = False, **settings) -> "VLLMRollout":
        """An engine for `policy`, started (or reused) from the directory `export()` writes."""
        return cls(export(), distributed=distributed, **settings)

    @staticmethod
    def _start(spec_dir: Path, settings: dict):
        in_process_engine()
        from vllm import LLM

        # The engine reads its model directory again after it starts (tokenizer, processor): serve from a private
        # copy of the small files, so a run directory can be deleted while the engine lives on for the next run
        # in this process. Weights are linked, not copied: they are read once, at the start.
        private = Path(tempfile.mkdtemp(prefix="mimovl-engine-"))
        for path in spec_dir.iterdir():
            if path.suffix == ".safetensors" or path.name.endswith(".safetensors.index.json"):
                (private / path.name).symlink_to(path.resolve())
            elif path.is_file():
                shutil.copy2(path, private / path.name)
        seed, extra = settings["seed"], {}
        if settings["distributed"]:
            extra["distributed_executor_backend"] = "external_launcher"
            # The executor reads its rank from torchrun's RANK variable. Lightning's launcher sets LOCAL_RANK,
            # WORLD_SIZE and MASTER_ADDR/PORT but not RANK; the process group it started already knows it.
            # (vLLM joins that group rather than starting its own, and with tensor parallel size 1 makes each
            # rank an independent engine: every rank generates its own prompts.)
            import torch.distributed as dist

            rank = dist.get_rank()
            os.environ.setdefault("RANK", str(rank))
            # Its own sampling seed per rank, or all ranks would draw the same random numbers.
            seed += rank
        if not torch.cuda.is_available() and settings["cpu_kv_cache_gib"]:
            # The CPU engine sizes its KV cache from this (unset, vLLM takes most of the machine's free RAM).
            extra["kv_cache_memory_bytes"] = int(settings["cpu_kv_cache_gib"] * 2**30)
        if settings["sleep"]:
            extra["enable_sleep_mode"] = True
        log.info("starting the vLLM engine on %s (%s)", spec_dir, settings)
        return LLM(
            model=str(private), dtype=settings["dtype"],
            max_model_len=settings["max_model_len"], limit_mm_per_prompt=settings["limit_mm_per_prompt"],
            gpu_memory_utilization=settings["gpu_memory_utilization"], enforce_eager=settings["enforce_eager"],
            seed=seed, tensor_parallel_size=1, mm_processor_kwargs=settings["mm_processor_kwargs"] or None,
            use_tqdm_on_load=False, **extra,
        )

    def release(self) -> None:
        """Frees the engine's GPU memory until it is next used (with `sleep`; otherwise nothing)."""
        if self.sleeps and not self.llm.llm_engine.is_sleeping():
            self.llm.sleep(level=1)

    @property
    def sleeps(self) -> bool:
        return bool(self.llm.llm_engine.vllm_config.model_config.enable_sleep_mode)

    def _wake(self) -> None:
        if self.sleeps and self.llm.llm_engine.is_sleeping():
            self.llm.wake_up()

    def sync(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads the weights in place, then drops what the old weights computed: cached prompt KV and vision
        encoder outputs (both the scheduler's record and the runner's storage)."""
        self._wake()
        engine = self.llm.llm_engine
        engine.model_executor.driver_worker.worker.model_runner.reload_weights(
            weights_iterator=iter(hf_names(named_tensors))
        )
        engine.reset_encoder_cache()
        engine.reset_prefix_cache()

    def generate(self, prompts: list[Prompt], sampling: Sampling, processor) -> list[list[Completion]]:
        from vllm import SamplingParams

        self._wake()
        requests = [_vllm_request(p, processor) for p in prompts]
        # No per-request seed: vLLM's CPU runner fails on seeded requests split by chunked prefill ("CPU
        # Generator does not use offset"). The in-process engine samples from torch's default generator, so a
        # call with a seed reseeds that one, in a forked RNG state: the same call draws the same responses,
        # also in a resumed run, and training's random state is left as it was.
        params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_new_tokens)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices, enabled=sampling.seed is not None):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [
            [Completion(list(c.token_ids), c.text, c.finish_reason == "stop") for c in output.outputs]
            for output in outputs
        ]


def _vllm_request(prompt: Prompt, processor) -> dict:
    data = {}
    if prompt.sample.get("images"):
        data["image"] = list(prompt.sample["images"])
    if prompt.sample.get("videos"):
        data["video"] = [_vllm_video(v) for v in prompt.sample["videos"]]
    request = {"prompt": prompt_text(prompt, processor)}
    if data:
        request["multi_modal_data"] = data
    return request


def _vllm_video(video: dict):
    """(frames (T, H, W, 3) uint8, metadata): frames already sampled at `fps` by the reader, with the same
    metadata the training side gives transformers' processor."""
    frames = np.stack([np.asarray(f.convert("RGB")) for f in video["frames"]])
    return frames, {**video_metadata(video), "video_backend": "opencv", "do_sample_frames": False}


class HFRollout:
    """transformers' `generate` on the live policy: `sync` has nothing to do (the engine is the policy).

    Slower than vLLM; for machines without vLLM and as the reference vLLM is checked against. One process
    only (see `from_policy`).
    """

    needs_weights = False  # it generates with the policy itself

    def __init__(self, model):
        self.model = model

    @classmethod
    def from_policy(cls, policy, export=None, distributed: bool = False) -> "HFRollout":
        if distributed:
            # Under FSDP2 the root's weights (embeddings, head, patch embedding) stay sharded when generate is
            # called past the root, and ranks with different prompt counts would not meet in their collectives.
            raise NotImplementedError("rollout=hf runs in one process; with 2+ ranks use rollout=vllm "
                                      "(one engine per rank)")
        return cls(policy)

    def sync(self, named_tensors) -> None:
        pass

    def release(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], sampling: Sampling, processor) -> list[list[Completion]]:
        model = self.model
        was_training = model.training
        model.eval()
        stop_ids = set(model.generation_config.eos_token_id or [])
        groups = []
        try:
            for i, prompt in enumerate(prompts):
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed + i)
                inputs = {k: v.to(model.device) for k, v in encode_prompt(prompt.sample, processor).items()}
                greedy = sampling.temperature == 0
                out = model.generate(
                    **inputs, max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
                    num_return_sequences=sampling.n,
                    **({} if greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}),
                )
                new = out[:, inputs["input_ids"].shape[1]:].tolist()
                groups.append([_hf_completion(ids, stop_ids, processor) for ids in new])
        finally:
            model.train(was_training)
        return groups


def _hf_completion(ids: list[int], stop_ids: set[int], processor) -> Completion:
    """Cuts the padding after the first stop token (kept, like vLLM keeps it)."""
    for end, token in enumerate(ids):
        if token in stop_ids:
            ids = ids[: end + 1]
            return Completion(ids, processor.tokenizer.decode(ids, skip_special_tokens=True), True)
    return Completion(ids, processor.tokenizer.decode(ids, skip_special_tokens=True), False)
