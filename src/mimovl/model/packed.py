"""The model forward on packed rows: per-sample MRoPE positions and no attention across samples.

transformers' Qwen2.5-VL does not separate packed samples by itself (and its packed-sequence detection from
position ids is silently wrong for 2+ rows of MRoPE positions), so the boundaries are always passed: a
`mimovl.model.attention.Layout` to the varlen backends, or a dense block mask to transformers' own sdpa
(`model.attn=sdpa_dense`, the reference). A branch (a response after a shared prompt, `prefix_ids`) also sees
its prefix and continues its positions.
"""

import torch

from mimovl.data.encode import IMAGE, TEXT, VIDEO
from mimovl.model.attention import Layout, block_causal_mask, is_varlen
from mimovl.model.logits import chunked_token_losses
from mimovl.model.mrope import rope_index


def _runs(types: torch.Tensor, value: int) -> int:
    """How many separate runs of `value` there are (one run per image or video)."""
    hits = (types == value).int()
    return int((hits[1:] > hits[:-1]).sum() + hits[:1].sum())


def packed_position_ids(model, batch: dict) -> torch.Tensor:
    """(4, B, L): a per-sample text position row, then the three MRoPE rows (`mimovl.model.mrope.rope_index`).

    A branch (`prefix_ids` > 0) continues from its prefix: its positions are those it would have packed right
    after the prefix (what vLLM gives the response tokens of that prompt)."""
    input_ids, types, segments = batch["input_ids"], batch["mm_token_type_ids"], batch["segment_ids"]
    prefixes = batch.get("prefix_ids")
    rows, length = input_ids.shape
    positions = torch.zeros(4, rows, length, dtype=torch.long, device=input_ids.device)
    grids = {key: iter(batch[key]) if key in batch else iter(())
             for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    for b in range(rows):
        seen = {}  # segment -> (start, end, its vision grids), for the branches after it
        for segment in segments[b].unique_consecutive().tolist():
            where = (segments[b] == segment).nonzero().squeeze(1)
            start, end = int(where[0]), int(where[-1]) + 1
            if segment == 0:
                positions[:, b, start:end] = torch.arange(end - start, device=input_ids.device)
                continue
            prefix = int(prefixes[b, start]) if prefixes is not None else 0
            if prefix:
                p_start, p_end, vision = seen[prefix]
                if (types[b, start:end] != TEXT).any():
                    raise ValueError("a branch after a shared prefix must be text only")
                span = torch.cat([torch.arange(p_start, p_end), torch.arange(start, end)]).to(input_ids.device)
            else:
                seg_types = types[b, start:end]
                n_images, n_videos = _runs(seg_types, IMAGE), _runs(seg_types, VIDEO)
                vision = {"image_grid_thw": [next(grids["image_grid_thw"]) for _ in range(n_images)],
                          "video_grid_thw": [next(grids["video_grid_thw"]) for _ in range(n_videos)],
                          "second_per_grid_ts": [next(grids["second_per_grid_ts"]) for _ in range(n_videos)]}
                seen[segment] = (start, end, vision)
                span = torch.arange(start, end, device=input_ids.device)
            rope, _ = rope_index(
                model.model, input_ids=input_ids[b, span][None], mm_token_type_ids=types[b, span][None],
                **{key: torch.stack(values) if values else None for key, values in vision.items()},
            )
            own = slice(len(span) - (end - start), len(span))
            positions[0, b, start:end] = torch.arange(len(span), device=input_ids.device)[own]
            positions[1:, b, start:end] = rope[:, 0, own]
    return positions


class PackedVLM(torch.nn.Module):
    """Runs a Qwen2.5-VL model on a packed batch and returns its logits (B, L, V).

    The vision tower runs exactly once per forward, over every image and video frame of the batch together,
    and on a one-patch dummy image when the batch has none. Under FSDP2 every rank must make the same
    collective calls in the same order; transformers' own forward calls the tower once for images, again for
    videos and not at all for text-only batches, which deadlocks ranks whose batches differ in kind. This
    module is the FSDP root (see `mimovl.model.sharding`), so the vision tower and the embeddings run
    inside one root forward.
    """

    def __init__(self, hf_model, logits_chunk: int = 0):
        super().__init__()
        self.hf = hf_model
        self.logits_chunk = logits_chunk  # tokens of full-vocabulary logits at a time in losses (0: all)

    def forward(self, batch: dict, positions: torch.Tensor | None = None, losses: bool = False,
                temperature: float = 1.0) -> torch.Tensor:
        """Logits (B, L, V); or (N, V) at the N True entries of the (B, L) mask `positions` only.

        losses=True: the (N,) float32 cross-entropy of `batch["targets"]` at `positions` under
        logits / temperature instead (what training needs), `logits_chunk` tokens of logits at a time
        (`mimovl.model.logits`), so the full-vocabulary logits never exist at once."""
        hidden = self.hidden_states(batch)
        if not losses:
            return self.hf.lm_head(hidden if positions is None else hidden[positions])
        return chunked_token_losses(hidden[positions], self.hf.lm_head, batch["targets"][positions],
                                    self.logits_chunk, temperature)

    def hidden_states(self, batch: dict) -> torch.Tensor:
        """The language model's last hidden states (B, L, H), after its final norm. Under FSDP2 call it only
        from inside this module's forward (a subclass's), where the root's parameters are gathered."""
        model = self.hf
        embeds = model.get_input_embeddings()(batch["input_ids"])
        embeds = self._scatter_vision(embeds, batch)
        positions = packed_position_ids(model, batch)
        language = model.model.language_model
        if not is_varlen(model):  # transformers' own attention: a dense mask it returns as-is
            mask = block_causal_mask(batch["segment_ids"], batch.get("prefix_ids"))
            return language(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                            use_cache=False).last_hidden_state
        # Three MRoPE rows, so transformers finds no "packed" text positions, and no mask to build: the layout
        # says where the samples are.
        layout = Layout.of(batch["segment_ids"], batch.get("prefix_ids"))
        no_masks = {kind: None for kind in set(language.config.layer_types)}
        return language(inputs_embeds=embeds, attention_mask=no_masks, position_ids=positions[1:],
                        use_cache=False, layout=layout).last_hidden_state

    def _scatter_vision(self, embeds: torch.Tensor, batch: dict) -> torch.Tensor:
        visual = self.hf.model.visual
        pixels = [batch[k] for k in ("pixel_values", "pixel_values_videos") if k in batch]
        grids = [batch[k] for k in ("image_grid_thw", "video_grid_thw") if k in batch]
        if not pixels:
            # One 2x2-patch blank image: its single merged token is used with weight 0.
            merge = visual.spatial_merge_size
            patch = visual.patch_embed
            width = patch.in_channels * patch.temporal_patch_size * patch.patch_size**2
            pixels = [embeds.new_zeros(merge * merge, width)]
            grids = [torch.tensor([[1, merge, merge]], device=embeds.device)]
            dummy = visual(torch.cat(pixels).to(visual.dtype), grid_thw=torch.cat(grids)).pooler_output
            return embeds + 0.0 * dummy.sum().to(embeds.dtype)
        tokens = visual(torch.cat(pixels).to(visual.dtype), grid_thw=torch.cat(grids)).pooler_output
        tokens = tokens.to(embeds.dtype)
        # Vision positions by mm_token_type_ids, not by token id: a sampled RL response may contain a pad token.
        image_mask = batch["mm_token_type_ids"] == IMAGE
        n_image = int(image_mask.sum())
        embeds = embeds.masked_scatter(image_mask[..., None], tokens[:n_image])
        video_mask = batch["mm_token_type_ids"] == VIDEO
        if video_mask.any():
            embeds = embeds.masked_scatter(video_mask[..., None], tokens[n_image:])
        return embeds
