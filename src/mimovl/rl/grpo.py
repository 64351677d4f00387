"""GRPO maths: group-normalised advantages and the policy-gradient loss, as the MiMo-VL report writes it.

Report (Eq. 1-2), for one prompt with G responses o_1..o_G and rewards r_1..r_G:

    A_i = (r_i - mean(r)) / std(r)
    J = (1 / sum_i |o_i|) * sum_i sum_j A_i * log pi(o_ij)          (gradient taken through log pi)

and the batch loss is -J averaged over the prompts. Every function here works on flat per-token tensors:
`coef` carries the aggregation (1 / (prompts * tokens of the group) for "token"), `advantages` the A_i of each
token's response. The ablation switches (clipped ratio, k3 KL to a reference) follow verl and TRL.
"""

from dataclasses import dataclass

import torch

from mimovl.errors import UsageError, require

AGGREGATIONS = ("token", "sequence")


@dataclass
class LossConfig:
    """How the policy loss is formed.

    Args:
        aggregation: "token" (the report: each group's token sum divided by the group's response tokens) or
            "sequence" (each response's mean over its tokens, then the mean over the group's responses).
        clip_low, clip_high: clip the ratio pi/pi_old to [1 - clip_low, 1 + clip_high] (PPO-style; separate
            low and high bounds as in DAPO). None: no clipping (the report).
        kl_coef: weight of the k3 estimate of KL(pi || pi_ref) to the frozen starting policy; 0: none (the report).
        epochs, minibatches: updates per rollout batch (epochs x minibatches optimizer steps). 1 and 1: one
            update per rollout, fully on-policy (the report); more need a clipped ratio to stay stable.
        std_eps: added to the group's standard deviation; groups whose rewards are all equal get A = 0.
    """

    aggregation: str = "token"
    clip_low: float | None = None
    clip_high: float | None = None
    kl_coef: float = 0.0
    epochs: int = 1
    minibatches: int = 1
    std_eps: float = 1e-6

    def __post_init__(self):
        require(self.aggregation in AGGREGATIONS, "rl.loss.aggregation", self.aggregation, f"one of {AGGREGATIONS}")
        if (self.clip_low is None) != (self.clip_high is None):
            raise UsageError("rl.loss.clip_low and rl.loss.clip_high are set together (or both null)")
        for name in ("clip_low", "clip_high"):
            value = getattr(self, name)
            require(value is None or 0 <= value, f"rl.loss.{name}", value, "must be 0 or more (or null)")
        require(self.kl_coef >= 0, "rl.loss.kl_coef", self.kl_coef, "must be 0 or more")
        require(self.epochs >= 1, "rl.loss.epochs", self.epochs, "must be at least 1")
        require(self.minibatches >= 1, "rl.loss.minibatches", self.minibatches, "must be at least 1")


def group_advantages(rewards: torch.Tensor, std_eps: float = 1e-6) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages (r - mean) / (std + eps), std with Bessel's correction as in
    TRL and verl. A group whose rewards are all equal gets zeros."""
    rewards = rewards.double()
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return ((rewards - mean) / (std + std_eps)).float()


def aggregation_coefs(lengths: list[list[int]], aggregation: str = "token") -> list[list[float]]:
    """The per-token weight of each response, per group (`lengths[p][i]` = tokens of response i of prompt p).

    token: 1 / (P * sum_i |o_i|);  sequence: 1 / (P * G * |o_i|). Summing coef * x over every token then
    averages the per-prompt quantity over the P prompts. Empty responses weigh nothing."""
    prompts = len(lengths)
    coefs = []
    for group in lengths:
        if aggregation == "token":
            total = sum(group)
            coefs.append([1.0 / (prompts * total) if total else 0.0 for _ in group])
        else:
            coefs.append([1.0 / (prompts * len(group) * n) if n else 0.0 for n in group])
    return coefs


def policy_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    coef: torch.Tensor,
    config: LossConfig,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss over flat per-token tensors (N,): log pi of each response token, its response's advantage and
    its aggregation coefficient. Without `old_logp` (one on-policy update) and without clipping it is the
    report's -sum(coef * A * log pi), whose gradient is -sum(coef * A * grad log pi). Otherwise the ratio form
    -sum(coef * min(ratio * A, clip(ratio) * A)) with ratio = pi / pi_old (`old_logp` defaults to
    `logp.detach()`, so the ratio is 1 and the gradient is the same). Returns (loss, stats)."""
    clipped_share = 0.0
    if old_logp is None and config.clip_low is None:
        surrogate = advantages * logp
    else:
        old_logp = logp.detach() if old_logp is None else old_logp
        ratio = torch.exp(logp - old_logp)
        surrogate = ratio * advantages
        if config.clip_low is not None:
            bounded = torch.clamp(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high) * advantages
            clipped_share = float((bounded < surrogate).float().mean()) if surrogate.numel() else 0.0
            surrogate = torch.minimum(surrogate, bounded)
    loss = -(coef * surrogate).sum()
    stats = {"clipped": clipped_share}
    if config.kl_coef:
        if ref_logp is None:
            raise ValueError("rl.loss.kl_coef > 0 needs the reference policy's log-probabilities")
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1.0  # k3: unbiased, always >= 0
        kl_term = (coef * kl).sum()
        loss = loss + config.kl_coef * kl_term
        stats["kl"] = float(kl_term.detach())
    return loss, stats
