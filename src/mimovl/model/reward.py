"""A Bradley-Terry reward model: a Qwen2.5-VL model plus a scalar head read at the last token of each sequence.

    rm, processor = RewardModel.load("outputs/mimovl/rm/hf")     # eval mode, float32
    rewards = rm(batch)          # (N,) raw rewards, one per packed sequence; sigmoid(reward) is in [0, 1]

A batch is a packed batch (`mimovl.data.packing.collate_rows`) whose sequences end with the `<|im_end|>` that
closes the scored response (`mimovl.data.preference.encode_response`). The directory is a normal Qwen2.5-VL
export (transformers and vLLM load its policy weights as they are) plus `reward_head.safetensors` (the head's
`weight` (1, H) and `bias` (1,)) and `reward_model.json` ({"modality": "vision" | "text"}).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

from mimovl.data.preference import MODALITIES
from mimovl.model.build import check_hf_dir, load_hf
from mimovl.model.export import export_state_dict
from mimovl.outputs import atomic_directory
from mimovl.stages.packed import PackedVLM

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
