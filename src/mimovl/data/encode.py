"""Turning a schema sample (see `mimovl.data.schema`) into model tokens and learning targets.

Documents (caption, interleaved, text) are plain text with their images inline; every text token is learned.
Chats go through the tokenizer's chat template; only assistant turns (including their `<|im_end|>`) are
learned. Vision pad tokens are never learned. The processor expands each `<|image_pad|>` / `<|video_pad|>`
to the number of merged patches of its image or video, so token counts always match the vision tower.
"""

from dataclasses import dataclass, field

import torch

from mimovl.data.schema import DOCUMENT_TYPES

IGNORE = -100
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
ASSISTANT_HEADER = "<|im_start|>assistant\n"
END_OF_TURN = "<|im_end|>"
END_OF_DOCUMENT = "<|endoftext|>"
# Values of `mm_token_type_ids`, as Qwen2.5-VL's processor writes them and `encode` keeps them: which positions
# are text, image patches or video patches (the packed forward places the vision features by them).
TEXT, IMAGE, VIDEO = 0, 1, 2


@dataclass(eq=False)  # identity comparison: tensors have no single truth value
class Encoded:
    """One sample as tensors. `targets[t]` is the token to predict after position t (IGNORE: nothing)."""

    type: str
    input_ids: torch.Tensor
    targets: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: torch.Tensor | None = None
    skipped: int = 0  # corrupt samples the reader skipped just before this one
    dropped: dict[str, int] = field(default_factory=dict)  # the same by reason, plus shard errors (stream.DROPPED)
    # A shared prefix then branches: the lengths of the branches at the end, each attending to the prefix and
    # itself only (`mimovl.rl.batch`'s shared-prompt layout); empty: one plain sample.
    branches: list[int] = field(default_factory=list)
    document: bool = False  # a document, all text learned: packing may cut it at text (mimovl.data.split)

    def __len__(self) -> int:
        return self.input_ids.numel()


def render_document(messages: list[dict]) -> str:
    """A document's text with its images and videos inline, ended by `<|endoftext|>`."""
    pieces = []
    for part in messages[0]["content"]:
        kind = part["type"]
        pieces.append(part["text"] if kind == "text" else IMAGE_PLACEHOLDER if kind == "image" else VIDEO_PLACEHOLDER)
    return "".join(pieces) + END_OF_DOCUMENT


def assistant_mask(input_ids: torch.Tensor, header: list[int], end_id: int) -> torch.Tensor:
    """True on the tokens of each assistant turn: after its header, up to and including its `<|im_end|>`."""
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    ids = input_ids.tolist()
    n = len(header)
    t = 0
    while t <= len(ids) - n:
        if ids[t : t + n] == header:
            start = t + n
            end = start
            while end < len(ids) and ids[end] != end_id:
                end += 1
            mask[start : min(end + 1, len(ids))] = True
            t = end
        t += 1
    return mask


def encode(sample: dict, processor) -> Encoded:
    """Tokenizes one sample with `processor` (a Qwen2.5-VL processor) and marks what is learned."""
    tokenizer = processor.tokenizer
    is_document = sample["type"] in DOCUMENT_TYPES
    text = render_document(sample["messages"]) if is_document else processor.apply_chat_template(
        sample["messages"], tokenize=False
    )
    features = _features(sample, text, processor)
    input_ids = features["input_ids"][0]
    mm_types = features["mm_token_type_ids"][0]
    if is_document:
        learned = mm_types == 0
    else:
        header = tokenizer(ASSISTANT_HEADER, add_special_tokens=False)["input_ids"]
        learned = assistant_mask(input_ids, header, tokenizer.convert_tokens_to_ids(END_OF_TURN))
    labels = torch.where(learned, input_ids, IGNORE)
    targets = torch.cat([labels[1:], torch.tensor([IGNORE])])
    return Encoded(
        type=sample["type"],
        input_ids=input_ids,
        targets=targets,
        mm_token_type_ids=mm_types,
        pixel_values=features.get("pixel_values"),
        image_grid_thw=features.get("image_grid_thw"),
        pixel_values_videos=features.get("pixel_values_videos"),
        video_grid_thw=features.get("video_grid_thw"),
        second_per_grid_ts=_as_tensor(features.get("second_per_grid_ts")),
        skipped=int(sample.get("skipped_before", 0)),
        dropped=dict(sample.get("dropped_before", {})),
        document=is_document,
    )


def _features(sample: dict, text: str, processor):
    """The processor's output for `text` with the sample's images and videos."""
    videos = sample.get("videos") or []
    kwargs = {}
    if videos:
        kwargs["videos"] = [video["frames"] for video in videos]
        # Each video's real rate, as metadata: without it the processor assumes 24 fps and the temporal MRoPE
        # positions (second_per_grid_ts) come out 12x too small at 2 fps; vLLM reads the same metadata.
        kwargs["video_metadata"] = [video_metadata(video) for video in videos]
        kwargs["do_sample_frames"] = False  # the reader already sampled them
    return processor(text=[text], images=sample.get("images") or None, return_tensors="pt", **kwargs)


def video_metadata(video: dict) -> dict:
    """transformers' / vLLM's metadata for a schema video whose frames are already sampled at video["fps"]."""
    n, fps = len(video["frames"]), float(video["fps"])
    return {"fps": fps, "total_num_frames": n, "frames_indices": list(range(n)), "duration": n / fps}


def encode_prompt(sample: dict, processor) -> dict:
    """Model inputs (batch of 1) for a chat sample whose messages end with a user turn, up to the assistant
    header: what `generate` continues from."""
    text = processor.apply_chat_template(sample["messages"], tokenize=False, add_generation_prompt=True)
    return dict(_features(sample, text, processor))


def encode_response(sample: dict, response_ids: list[int], processor) -> Encoded:
    """A prompt (as `encode_prompt`) followed by a sampled response; only the response tokens are learned."""
    features = encode_prompt(sample, processor)
    prompt_ids = features["input_ids"][0]
    response = torch.tensor(response_ids, dtype=torch.long)
    input_ids = torch.cat([prompt_ids, response])
    targets = torch.full_like(input_ids, IGNORE)
    targets[len(prompt_ids) - 1 : len(input_ids) - 1] = response  # position t predicts token t + 1
    return Encoded(
        type=sample["type"],
        input_ids=input_ids,
        targets=targets,
        mm_token_type_ids=torch.cat([features["mm_token_type_ids"][0], torch.zeros_like(response)]),
        pixel_values=features.get("pixel_values"),
        image_grid_thw=features.get("image_grid_thw"),
        pixel_values_videos=features.get("pixel_values_videos"),
        video_grid_thw=features.get("video_grid_thw"),
        second_per_grid_ts=_as_tensor(features.get("second_per_grid_ts")),
    )


def _as_tensor(value) -> torch.Tensor | None:
    return None if value is None else torch.as_tensor(value, dtype=torch.float32)
