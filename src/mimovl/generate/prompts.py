"""RL prompts: schema samples cut before their last answer, with what scores the answer.

A sample with `meta["task"]` (a key of `mimovl.rewards.REWARDS`) is scored by that rule against
`meta["answer"]`; any other chat sample is open-ended and is scored by a reward model (text-only or multimodal,
by whether the prompt shows an image or video).
"""

import io
from dataclasses import dataclass, field

from PIL import Image

from mimovl.data.schema import DOCUMENT_TYPES
from mimovl.data.shards import encode_image

PNG = "__png__"  # the key of an image stored as PNG bytes in `Prompt.to_state`


@dataclass(eq=False)
class Prompt:
    """One RL prompt. `sample` is a schema sample whose messages end with a user turn."""

    key: str
    task: str | None  # a REWARDS key; None: open-ended, scored by a reward model
    answer: object
    sample: dict = field(repr=False)

    @property
    def modality(self) -> str:
        """"vision" when the prompt shows an image or a video, else "text" (picks the reward model)."""
        return "vision" if self.sample.get("images") or self.sample.get("videos") else "text"

    @property
    def kind(self) -> str:
        """The name its metrics are logged under: the task, or `open_<modality>`."""
        return self.task or f"open_{self.modality}"

    def to_state(self) -> dict:
        """The prompt as plain values (images as PNG bytes, lossless) for a checkpoint."""
        return {"key": self.key, "task": self.task, "answer": self.answer, "sample": _plain(self.sample)}

    @classmethod
    def from_state(cls, state: dict) -> "Prompt":
        return cls(state["key"], state["task"], state["answer"], _unplain(state["sample"]))


def _plain(value):
    """`value` with every PIL image replaced by {"png": bytes} (pickling a PIL image stores raw pixels)."""
    if isinstance(value, Image.Image):
        return {PNG: encode_image(value, "png")}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _unplain(value):
    if isinstance(value, dict):
        if set(value) == {PNG}:
            image = Image.open(io.BytesIO(value[PNG]))
            image.load()
            return image
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unplain(v) for v in value)
    return value


def to_prompt(sample: dict) -> Prompt | None:
    """The prompt of a chat sample (its trailing assistant turns removed); None for documents."""
    if sample["type"] in DOCUMENT_TYPES:
        return None
    messages = list(sample["messages"])
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    if not messages:
        return None
    meta = sample.get("meta") or {}
    return Prompt(
        key=sample.get("key", ""),
        task=meta.get("task"),
        answer=meta.get("answer"),
        sample={**sample, "messages": messages},
    )


def prompt_text(prompt: Prompt, processor) -> str:
    """The chat-templated prompt, ending with the assistant header the model continues from."""
    return processor.apply_chat_template(prompt.sample["messages"], tokenize=False, add_generation_prompt=True)
