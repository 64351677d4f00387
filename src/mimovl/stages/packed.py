"""The model forward on packed rows: per-sample MRoPE positions and no attention across samples.

transformers' Qwen2.5-VL does not separate packed samples by itself under sdpa or eager attention (its
packed-sequence detection needs flash-attention), so on those we pass a block-diagonal causal mask. Under
flash_attention_2 the mask is left out and the per-sample text positions (the first of the four position
rows) tell the kernel where samples start.
"""

import torch

from mimovl.data.encode import IGNORE

IMAGE, VIDEO = 1, 2  # values of mm_token_type_ids


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool: query i may see key j when both are in the same segment and j <= i.

    Padding (segment 0) attends within the padding only, which keeps its rows finite.
    """
    length = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    return (same & causal)[:, None]


def _runs(types: torch.Tensor, value: int) -> int:
    """How many separate runs of `value` there are (one run per image or video)."""
    hits = (types == value).int()
    return int((hits[1:] > hits[:-1]).sum() + hits[:1].sum())


def packed_position_ids(model, batch: dict) -> torch.Tensor:
    """(4, B, L): a per-sample text position row, then the three MRoPE rows from the model's own get_rope_index."""
    input_ids, types, segments = batch["input_ids"], batch["mm_token_type_ids"], batch["segment_ids"]
    rows, length = input_ids.shape
    positions = torch.zeros(4, rows, length, dtype=torch.long, device=input_ids.device)
    image_grids = iter(batch["image_grid_thw"]) if "image_grid_thw" in batch else iter(())
    video_grids = iter(batch["video_grid_thw"]) if "video_grid_thw" in batch else iter(())
    video_seconds = iter(batch["second_per_grid_ts"]) if "second_per_grid_ts" in batch else iter(())
    for b in range(rows):
        for segment in segments[b].unique().tolist():
            where = (segments[b] == segment).nonzero().squeeze(1)
            start, end = int(where[0]), int(where[-1]) + 1
            positions[0, b, start:end] = torch.arange(end - start, device=input_ids.device)
            if segment == 0:
                positions[1:, b, start:end] = positions[0, b, start:end]
                continue
            seg_types = types[b, start:end]
            n_images, n_videos = _runs(seg_types, IMAGE), _runs(seg_types, VIDEO)
            images = [next(image_grids) for _ in range(n_images)]
            videos = [next(video_grids) for _ in range(n_videos)]
            seconds = [next(video_seconds) for _ in range(n_videos)]
            rope, _ = model.model.get_rope_index(
                input_ids=input_ids[b : b + 1, start:end],
                mm_token_type_ids=seg_types[None],
                image_grid_thw=torch.stack(images) if images else None,
                video_grid_thw=torch.stack(videos) if videos else None,
                second_per_grid_ts=torch.stack(seconds) if seconds else None,
            )
            positions[1:, b, start:end] = rope[:, 0]
    return positions


def packed_logits(model, batch: dict) -> torch.Tensor:
    """Logits (B, L, V) of a packed batch, each sample computed as if alone."""
    flash = "flash" in str(model.config._attn_implementation)
    return model(
        input_ids=batch["input_ids"],
        attention_mask=None if flash else block_causal_mask(batch["segment_ids"]),
        position_ids=packed_position_ids(model, batch),
        pixel_values=batch.get("pixel_values"),
        image_grid_thw=batch.get("image_grid_thw"),
        pixel_values_videos=batch.get("pixel_values_videos"),
        video_grid_thw=batch.get("video_grid_thw"),
        use_cache=False,
    ).logits


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in float32, 0 where the target is IGNORE."""
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none"
    ).view_as(targets)
