"""Per-token cross-entropy from the last hidden states, without the full-vocabulary logits.

At MiMo-VL's 151,680-token vocabulary the float32 logits take 0.6 GB per 1K tokens: 20 GB for one 32K row of
text, ~160 GB for an RL update of 64 responses of 4K tokens. `chunked_token_losses` computes the loss `chunk`
tokens at a time and recomputes each chunk's logits in backward, so at most (chunk, V) float32 logits exist at
once, in forward and in backward (`model.logits_chunk`, 0: the plain full-logits path). The values and gradients
are those of `token_losses(lm_head(hidden) / temperature, targets)`.
"""

import torch

from mimovl.data.encode import IGNORE
from mimovl.errors import require


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in float32, shaped like `targets`, 0 where the target is IGNORE.

    `logits` is `targets.shape + (V,)`: (B, L, V) for (B, L) targets or (N, V) for (N,) targets."""
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view_as(targets)


class _ChunkedLoss(torch.autograd.Function):
    """(N, H) hidden, (V, H) weight, (N,) targets -> (N,) float32 losses, one chunk of logits at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, temperature: float):
        losses = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            wanted = targets[start : start + chunk]
            logits = _chunk_logits(hidden[start : start + chunk], weight, temperature)
            picked = logits.gather(1, wanted.clamp(min=0)[:, None]).squeeze(1)
            losses[start : start + chunk] = (logits.logsumexp(-1) - picked) * (wanted != IGNORE)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk, ctx.temperature = chunk, temperature
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        hidden, weight, targets = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            part, wanted = hidden[start : start + ctx.chunk], targets[start : start + ctx.chunk]
            # d loss / d logits = softmax - one_hot (0 on IGNORE rows), times the incoming gradient: in place,
            # so one (chunk, V) float32 tensor is alive.
            grad = _chunk_logits(part, weight, ctx.temperature)
            grad = grad.sub_(grad.logsumexp(-1, keepdim=True)).exp_()
            kept = wanted != IGNORE
            rows = torch.arange(len(wanted), device=wanted.device)
            grad[rows[kept], wanted[kept]] -= 1.0
            grad.mul_((grad_losses[start : start + ctx.chunk] * kept / ctx.temperature)[:, None])
            if grad_hidden is not None:
                grad_hidden[start : start + ctx.chunk] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(grad.T, part.float())
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    return (hidden @ weight.T).float() / temperature


def chunked_token_losses(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, chunk: int,
                         temperature: float = 1.0) -> torch.Tensor:
    """(N,) float32 cross-entropy of `head(hidden) / temperature` against `targets` (IGNORE: 0), computed
    `chunk` tokens at a time (0: all at once, through the full logits)."""
    if head.bias is not None:
        raise ValueError("chunked losses expect a language-model head without bias (Qwen2's has none)")
    if not chunk:
        return token_losses(head(hidden) / temperature, targets)
    return _ChunkedLoss.apply(hidden, head.weight, targets, chunk, temperature)


def check_chunk(chunk) -> int:
    """`model.logits_chunk` as an int, or a UsageError."""
    require(isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 0, "model.logits_chunk", chunk,
            "must be a whole number of tokens, 0 (off) or more")
    return chunk
