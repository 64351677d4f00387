"""Qwen2.5-VL's MRoPE positions as the model was trained with them, and as vLLM computes them.

Each text token advances all three rows by one. An image or video takes (t, h, w) positions from where the
text stopped: h and w count merged patches, t steps `tokens_per_second * second_per_grid_t` per temporal patch
(1 for an image). The text after it starts at the largest position the image or video used, plus one.

transformers 5.19's `get_rope_index` starts that text at `max(h, w)` merged patches after the vision start
instead, ignoring the time axis. For an image the two agree; after a video of t temporal patches the text is
placed up to `(t - 1) * tokens_per_second * second_per_grid_t` positions too early, so transformers and vLLM
disagree on every token after a video (greedy answers differ), and RL would train on positions its rollouts
never had. `rope_index` is the rule of Qwen2.5-VL's release and vLLM's `get_mrope_input_positions`;
`use_reference_positions` makes a loaded model's own forward and `generate` use it.
"""

from types import MethodType

import torch

from mimovl.data.encode import IMAGE, TEXT, VIDEO


def rope_index(model, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor,
               image_grid_thw: torch.Tensor | None = None, video_grid_thw: torch.Tensor | None = None,
               second_per_grid_ts: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
               **_) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions (3, B, L), deltas (B, 1)), with `Qwen2_5_VLModel.get_rope_index`'s arguments and results;
    `model` is that `Qwen2_5_VLModel` (its config and `get_vision_position_ids` are used)."""
    merge = model.config.vision_config.spatial_merge_size
    tokens_per_second = model.config.vision_config.tokens_per_second
    grids = {IMAGE: iter(image_grid_thw if image_grid_thw is not None else ()),
             VIDEO: iter(video_grid_thw if video_grid_thw is not None else ())}
    seconds = iter(second_per_grid_ts if second_per_grid_ts is not None else ())
    rows, length = input_ids.shape
    positions = torch.zeros(3, rows, length, dtype=torch.long, device=input_ids.device)
    deltas = []
    for b in range(rows):
        keep = (attention_mask[b].bool() if attention_mask is not None
                else torch.ones(length, dtype=torch.bool, device=input_ids.device))
        types = mm_token_type_ids[b][keep].tolist()
        pieces, start, current = [], 0, 0
        while start < len(types):
            end = start
            while end < len(types) and types[end] == types[start]:
                end += 1
            kind = types[start]
            if kind == TEXT:
                piece = torch.arange(end - start, device=input_ids.device).expand(3, -1) + current
            else:
                grid = next(grids[kind], None)
                if grid is None:
                    raise ValueError(f"mm_token_type_ids mark more {'videos' if kind == VIDEO else 'images'} "
                                     "than the grids given")
                interval = tokens_per_second * float(next(seconds, 1.0)) if kind == VIDEO else 1.0
                piece = model.get_vision_position_ids(current, grid, 1, merge, interval, device=input_ids.device)
            pieces.append(piece)
            current = int(piece.max()) + 1
            start = end
        row = torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long, device=input_ids.device)
        positions[:, b, keep] = row
        deltas.append(current - len(types))
    return positions, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def use_reference_positions(model) -> None:
    """Make a `Qwen2_5_VLForConditionalGeneration`'s forward and `generate` place text after a video as vLLM
    does (`rope_index`)."""
    model.model.get_rope_index = MethodType(rope_index, model.model)
