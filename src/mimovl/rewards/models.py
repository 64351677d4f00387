"""Learned rewards: a Bradley-Terry reward model (stage rm or rm_text) scoring responses into [0, 1].

    scorer = RewardModelScorer("outputs/mimovl/rm/hf")            # a directory `stage=rm` exported
    scorer.score([sample], ["<think>...</think>3"])              # [0.83]

A sample is a schema sample's prompt (`mimovl.data.schema`): "messages" ending with a user turn, "images"
(RGB PIL images) and "videos" ({"frames": [PIL], "timestamps": [s], "fps": float}), one per image or video
part; other keys are ignored. Each score is sigmoid(reward) of the prompt answered by the response, read at
the response's closing `<|im_end|>` exactly as in training. A response longer than `max_response_chars` is
scored by its last that many characters (`mimovl.rewards.parse.response_tail`): scoring cost grows faster than
linearly with length. `mimovl.rewards.service` serves a scorer over HTTP.
"""

from __future__ import annotations

import threading

import torch

from mimovl.data.packing import Row, collate_rows
from mimovl.data.preference import encode_response, is_text_only
from mimovl.data.schema import validate
from mimovl.model.reward import RewardModel
from mimovl.rewards.parse import MAX_RESPONSE_CHARS, response_tail


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
