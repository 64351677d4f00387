"""Rollouts into a training batch: prompt + response per sample, packed into rows, with per-token weights.

Each response becomes one packed segment whose learned targets are its sampled tokens. Besides the usual
packed-batch fields (`mimovl.data.packing.collate_rows`), the batch carries two float (B, L) tensors aligned
with `targets`: `advantages` (A of the response the token belongs to) and `coef` (its aggregation weight,
`mimovl.rl.grpo.aggregation_coefs`), so the loss is a plain weighted sum over learned tokens.
"""

import torch

from mimovl.data.encode import encode_response
from mimovl.data.packing import collate_rows, pack_rows
from mimovl.rl.grpo import aggregation_coefs


def rollout_batch(prompts: list, groups: list[list], advantages: torch.Tensor, processor, seq_len: int,
                  aggregation: str = "token") -> dict[str, torch.Tensor]:
    """One packed batch from `groups[p]` (the `Completion`s of prompt p) and their (P, G) advantages."""
    coefs = aggregation_coefs([[len(c.token_ids) for c in group] for group in groups], aggregation)
    weights, samples = {}, []
    for p, (prompt, group) in enumerate(zip(prompts, groups)):
        for i, completion in enumerate(group):
            if not completion.token_ids:
                continue  # nothing sampled, nothing to learn
            sample = encode_response(prompt.sample, completion.token_ids, processor)
            weights[id(sample)] = (float(advantages[p, i]), coefs[p][i])
            samples.append(sample)
    rows = list(pack_rows(samples, seq_len, buffer=len(samples) or 1))
    if sum(row.too_long for row in rows):
        raise ValueError(f"a prompt with its response is longer than seq_len={seq_len}; raise rollout.max_model_len")
    width = max(row.length for row in rows)
    batch = collate_rows(rows, width, processor.tokenizer.pad_token_id)
    batch["advantages"] = torch.zeros(batch["targets"].shape)
    batch["coef"] = torch.zeros(batch["targets"].shape)
    for b, row in enumerate(rows):
        start = 0
        for sample in row.samples:
            end = start + len(sample)
            advantage, coef = weights[id(sample)]
            batch["advantages"][b, start:end] = advantage
            batch["coef"][b, start:end] = coef
            start = end
    return batch
