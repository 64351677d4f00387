"""Rollouts into a training batch: packed rows of prompts and responses, with per-token weights.

Two layouts, the same log-probabilities and loss:

    unshared (rl.share_prompt=false)  each response packed with its own copy of its prompt: G x (p + r) tokens
                                      and G vision-tower passes per prompt
    shared   (rl.share_prompt=true)   the prompt once, then its G responses as branches that each attend to the
                                      prompt and to themselves: (p - 1) + G x r tokens, one vision pass. A branch
                                      starts with the prompt's last token (whose logits predict the response's
                                      first token, and differ per response) and ends before the response's last
                                      token (which predicts nothing).

`rl.micro_batch_rows` splits the rows of one update into micro-batches that go through the model a few at a
time (gradients accumulate; the normalisation is the whole update's). Besides the packed-batch fields
(`mimovl.data.packing.collate_rows`), each batch carries two float (B, L) tensors aligned with `targets`:
`advantages` (A of the response the token belongs to) and `coef` (its aggregation weight,
`mimovl.rl.grpo.aggregation_coefs`), so the loss is a plain weighted sum over learned tokens.
"""

import torch

from mimovl.data.encode import IGNORE, Encoded, encode_prompt, encode_response
from mimovl.data.packing import collate_rows, pack_rows
from mimovl.rl.grpo import aggregation_coefs


def rollout_batches(prompts: list, groups: list[list], advantages: torch.Tensor, processor, seq_len: int,
                    aggregation: str = "token", share_prompt: bool = False,
                    micro_batch_rows: int = 0) -> list[dict[str, torch.Tensor]]:
    """The packed micro-batches of one update from `groups[p]` (the `Completion`s of prompt p) and their (P, G)
    advantages: at most `micro_batch_rows` rows each (0: one batch). Each token's `coef` is normalised over all
    of them (the report's denominator is the group's tokens), so their losses add up to the whole update's."""
    coefs = aggregation_coefs([[len(c.token_ids) for c in group] for group in groups], aggregation)
    weights, samples = {}, []  # id(sample) -> (advantage, coef) of each of its responses, in order
    for p, (prompt, group) in enumerate(zip(prompts, groups)):
        responses = [(c.token_ids, (float(advantages[p, i]), coefs[p][i]))
                     for i, c in enumerate(group) if c.token_ids]  # nothing sampled, nothing to learn
        if share_prompt:
            for sample, weight in _shared(prompt.sample, responses, processor, seq_len):
                weights[id(sample)] = weight
                samples.append(sample)
            continue
        for token_ids, weight in responses:
            sample = encode_response(prompt.sample, token_ids, processor)
            weights[id(sample)] = [weight]
            samples.append(sample)
    rows = list(pack_rows(samples, seq_len, buffer=len(samples) or 1))
    if sum(row.too_long for row in rows):
        raise ValueError(f"a prompt with its response is longer than seq_len={seq_len}; raise rollout.max_model_len")
    size = micro_batch_rows or len(rows)
    return [_collate(rows[i : i + size], weights, processor) for i in range(0, len(rows), size)]


def _collate(rows: list, weights: dict, processor) -> dict[str, torch.Tensor]:
    batch = collate_rows(rows, max(row.length for row in rows), processor.tokenizer.pad_token_id)
    batch["advantages"] = torch.zeros(batch["targets"].shape)
    batch["coef"] = torch.zeros(batch["targets"].shape)
    for b, row in enumerate(rows):
        start = 0
        for sample in row.samples:
            # Each response's tokens: the whole sample unshared; each branch, shared.
            spans = [len(sample)] if not sample.branches else [len(sample) - sum(sample.branches), *sample.branches]
            pieces = weights[id(sample)] if not sample.branches else [(0.0, 0.0), *weights[id(sample)]]
            for length, (advantage, coef) in zip(spans, pieces):
                batch["advantages"][b, start : start + length] = advantage
                batch["coef"][b, start : start + length] = coef
                start += length
    return batch


def _shared(sample: dict, responses: list[tuple[list[int], tuple]], processor, seq_len: int):
    """(Encoded, weights) with the prompt once and the responses as branches; as many as it takes to fit
    `seq_len` (a group too long for one row repeats its prompt in the next)."""
    features = encode_prompt(sample, processor)
    prompt, types = features["input_ids"][0], features["mm_token_type_ids"][0]
    parts, weights, length = [], [], len(prompt) - 1
    for token_ids, weight in responses:
        if parts and length + len(token_ids) > seq_len:
            yield _branched(sample, features, prompt, types, parts), weights
            parts, weights, length = [], [], len(prompt) - 1
        parts.append(torch.tensor(token_ids, dtype=torch.long))
        weights.append(weight)
        length += len(token_ids)
    if parts:
        yield _branched(sample, features, prompt, types, parts), weights


def _branched(sample: dict, features: dict, prompt: torch.Tensor, types: torch.Tensor,
              responses: list[torch.Tensor]) -> Encoded:
    last, seconds = prompt[-1:], features.get("second_per_grid_ts")
    inputs = [prompt[:-1]] + [torch.cat([last, r[:-1]]) for r in responses]
    targets = [torch.full((len(prompt) - 1,), IGNORE, dtype=torch.long)] + responses
    input_ids = torch.cat(inputs)
    return Encoded(
        type=sample["type"], input_ids=input_ids, targets=torch.cat(targets),
        mm_token_type_ids=torch.cat([types[:-1], torch.zeros(len(input_ids) - len(prompt) + 1, dtype=torch.long)]),
        pixel_values=features.get("pixel_values"), image_grid_thw=features.get("image_grid_thw"),
        pixel_values_videos=features.get("pixel_values_videos"), video_grid_thw=features.get("video_grid_thw"),
        second_per_grid_ts=None if seconds is None else torch.as_tensor(seconds, dtype=torch.float32),
        branches=[len(r) for r in responses],
    )
