"""A Bradley-Terry reward model: a Qwen2.5-VL model plus a scalar head read at the last token of each sequence.

    rm, processor = RewardModel.load("outputs/mimovl/rm/hf")     # eval mode, float32
    rewards = rm(batch)          # (N,) raw rewards, one per packed sequence; sigmoid(reward) is in [0, 1]

A batch is a packed batch (`mimovl.data.packing.collate_rows`) whose sequences end with the `<|im_end|>` that
closes the scored response (`mimovl.data.pairs.encode_response`). The directory is a normal Qwen2.5-VL
export (transformers and vLLM load its policy weights as they are) plus `reward_head.safetensors` (the head's
`weight` (1, H) and `bias` (1,)) and `reward_model.json` ({"modality": "vision" | "text"}).

Scoring (prompt, response) pairs into [0, 1], in this process or behind `python -m mimovl.serve`:

    scorer = RewardModelScorer("outputs/mimovl/rm/hf")            # a directory `stage=rm` exported
    scorer.score([sample], ["<think>...</think>3"])              # [0.83]

A sample is a schema sample's prompt (`mimovl.data.schema`): "messages" ending with a user turn, "images" and
"videos", one per image or video part. Each score is sigmoid(reward) of the prompt answered by the response, read
at the response's closing `<|im_end|>` exactly as in training. A response longer than `max_response_chars` is
scored by its last that many characters (`mimovl.rewards.parse.response_tail`): cost grows faster than linearly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

from mimovl.data.packing import Row, collate_rows
from mimovl.data.pairs import encode_response, is_text_only
from mimovl.data.schema import MODALITIES, validate
from mimovl.model.build import check_hf_dir, load_hf
from mimovl.model.export import export_state_dict
from mimovl.outputs import atomic_directory
from mimovl.rewards.parse import MAX_RESPONSE_CHARS, response_tail
from mimovl.model.packed import PackedVLM

HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_model.json"


def sequence_ends(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: True at the last token of each sequence (segment > 0); row-major order is sequence order."""
    following = torch.cat([segment_ids[:, 1:], torch.zeros_like(segment_ids[:, :1])], dim=1)
    return (segment_ids > 0) & (segment_ids != following)


class RewardModel(PackedVLM):
    """`hf` (a Qwen2_5_VLForConditionalGeneration) and `head`, a Linear(hidden, 1) on its last hidden states.

    `modality`: "vision" (reads images and videos) or "text" (trained on text-only prompts; scorers refuse
    media). The forward is PackedVLM's, so packed sequences never see each other; `lm_head` is kept (the
    directory stays a loadable policy) but unused.
    """

    def __init__(self, hf_model, modality: str = "vision"):
        super().__init__(hf_model)
        if modality not in MODALITIES:
            raise ValueError(f"reward model modality must be one of {MODALITIES}, got {modality!r}")
        self.modality = modality
        hidden = hf_model.config.text_config.hidden_size
        self.head = torch.nn.Linear(hidden, 1, dtype=hf_model.dtype, device=hf_model.device)
        torch.nn.init.zeros_(self.head.bias)  # centred at the start: sigmoid(reward) = 0.5 on average

    def forward(self, batch: dict) -> torch.Tensor:
        """(N,) float32 rewards, one per sequence of the batch in row-major order."""
        hidden = self.hidden_states(batch)
        return self.head(hidden[sequence_ends(batch["segment_ids"])]).squeeze(-1).float()

    def save(self, directory: str | Path, processor, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Writes the reward model directory; `state_dict` is this module's full one (gathered when sharded)."""
        if state_dict is None:
            if any(isinstance(p, DTensor) or p.is_meta for p in self.parameters()):
                raise ValueError("the reward model is sharded or on the meta device; pass the gathered state_dict")
            state_dict = self.state_dict()
        state_dict = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
        policy = {k.removeprefix("hf."): v for k, v in state_dict.items() if k.startswith("hf.")}
        head = {k.removeprefix("head."): v.detach().cpu().contiguous() for k, v in state_dict.items()
                if k.startswith("head.")}
        with atomic_directory(directory) as tmp:  # the head and its config swap in with the policy, or nothing does
            export_state_dict(policy, self.hf.config, processor, tmp,
                              generation=getattr(self.hf, "generation_config", None))
            save_file(head, str(tmp / HEAD_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps({"modality": self.modality}, indent=1))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path, dtype: str | torch.dtype = "float32") -> tuple[RewardModel, object]:
        """(reward model in eval mode, processor) from a directory `save` wrote."""
        directory = check_hf_dir(directory, "reward model")
        if not (directory / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"{directory} is not a reward model directory (no {CONFIG_FILE}); train one with "
                "`python src/run.py stage=rm` (or stage=rm_text) and pass its hf/ directory"
            )
        modality = json.loads((directory / CONFIG_FILE).read_text())["modality"]
        hf, processor = load_hf(directory, dtype)
        model = cls(hf, modality)
        model.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
        return model.eval(), processor


class RewardModelScorer:
    """Scores (prompt, response) pairs with the reward model in `path`; safe to call from several threads.

    Args:
        path: a reward model directory (`mimovl.model.reward.RewardModel.save`).
        device: where the model runs ("cpu", "cuda", "cuda:1").
        batch_size: sequences per forward (packed into one row; memory grows with its length squared).
        dtype: the weights' dtype, e.g. "bfloat16" on GPUs.
        max_response_chars: a longer response is scored by its last this many characters; None: all of it.
    """

    def __init__(self, path, device: str = "cpu", batch_size: int = 8, dtype: str = "float32",
                 max_response_chars: int | None = MAX_RESPONSE_CHARS):
        self.model, self.processor = RewardModel.load(path, dtype)
        self.model.to(device)
        self.path, self.device, self.batch_size = str(path), torch.device(device), batch_size
        self.max_response_chars = max_response_chars
        self.modality = self.model.modality
        self._lock = threading.Lock()  # one forward at a time: concurrent callers would only add up memory

    def score(self, samples: list[dict], responses: list[str]) -> list[float]:
        """sigmoid(reward) in [0, 1] for each (sample, response), in order; a response is cut to its last
        `max_response_chars` characters first.

        Raises ValueError for mismatched lengths, a malformed prompt, or media given to a text reward model.
        """
        if len(samples) != len(responses):
            raise ValueError(f"{len(samples)} samples but {len(responses)} responses")
        encoded = [self._encode(i, s, r) for i, (s, r) in enumerate(zip(samples, responses))]
        scores: list[float] = []
        with self._lock, torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                chunk = encoded[start : start + self.batch_size]
                row = Row(samples=chunk)
                batch = collate_rows([row], row.length, self.processor.tokenizer.pad_token_id)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                scores += torch.sigmoid(self.model(batch)).tolist()
        return scores

    def _encode(self, index: int, sample: dict, response: str):
        if "messages" not in sample:
            raise ValueError(f"sample {index} has no 'messages'")
        prompt = {
            "key": f"sample{index}", "type": "preference", "messages": sample["messages"],
            "images": list(sample.get("images") or []), "videos": list(sample.get("videos") or []),
            "meta": {"chosen": "a", "rejected": "b"},  # stand-ins: validate checks a preference's answers too
        }
        validate(prompt)  # roles end with a user turn; one image or video per part
        if self.modality == "text" and not is_text_only(prompt):
            raise ValueError(f"sample {index} has images or videos, but {self.path} is a text-only reward model")
        return encode_response(prompt, response_tail(response, self.max_response_chars), self.processor)
