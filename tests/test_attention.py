"""Packed attention backends (`mimovl.model.attention`) and the shared-prompt RL layout (`mimovl.rl.batch`).

Every backend that runs on a CPU gives the dense-mask reference's logits, loss and gradients (float32, 1e-5) on
rows that mix images, a video, documents, chats and padding. The flash wiring runs with a stand-in kernel (the
real ones need CUDA) that computes what the kernel's contract says and records what it was called with.
"""

import contextlib

import pytest
import torch

from mimovl.data.encode import IGNORE, encode, encode_prompt
from mimovl.data.packing import collate_rows, pack_rows
from mimovl.data.schema import chat, image, text
from mimovl.errors import UsageError
from mimovl.generate.engines import Completion
from mimovl.generate.prompts import Prompt
from mimovl.model import attention
from mimovl.model.attention import Layout, use_attention
from mimovl.model.build import build_tiny
from mimovl.model.logits import token_losses
from mimovl.model.packed import PackedVLM, packed_position_ids
from mimovl.rl.batch import rollout_batches
from mimovl.rl.grpo import LossConfig, group_advantages, policy_loss
from test_packing import _samples


class StandIn:
    """A varlen kernel by its contract, (T, H, D) tensors, causal aligned to each key sequence's end."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, cu_q, cu_k, max_q, max_k, scale):
        self.calls.append((cu_q.tolist(), cu_k.tolist(), max_q, max_k))
        outs = []
        for i in range(len(cu_q) - 1):
            qq = q[cu_q[i] : cu_q[i + 1]].transpose(0, 1)
            kk, vv = (t[cu_k[i] : cu_k[i + 1]].transpose(0, 1) for t in (k, v))
            mask = torch.ones(qq.shape[1], kk.shape[1], dtype=torch.bool).tril(kk.shape[1] - qq.shape[1])
            outs.append(torch.nn.functional.scaled_dot_product_attention(
                qq, kk, vv, attn_mask=mask, scale=scale, enable_gqa=qq.shape[0] != kk.shape[0]).transpose(0, 1))
        return torch.cat(outs)


@pytest.fixture
def stand_in(monkeypatch):
    kernel = StandIn()
    monkeypatch.setattr(attention, "varlen_kernel", lambda: kernel)
    return kernel


@contextlib.contextmanager
def _attending(model, backend: str):
    """`model` on `backend` inside the block, back on the dense reference after it (the model is shared)."""
    use_attention(model, backend)
    try:
        yield
    finally:
        use_attention(model, "sdpa_dense")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=0)


def _mixed_batch(processor) -> dict:
    """Three rows: images, a video, documents, chats, and padding at the end of each row."""
    encoded = [encode(s, processor) for s in _samples()]
    rows = list(pack_rows(encoded, seq_len=max(map(len, encoded)) + 30, buffer=8))
    assert len(rows) >= 2 and any(len(r.samples) > 1 for r in rows)
    return collate_rows(rows, seq_len=max(r.length for r in rows) + 5, pad_id=processor.tokenizer.pad_token_id)


def _forward_backward(model, batch, backend: str):
    use_attention(model, backend)
    model.zero_grad()
    logits = PackedVLM(model)(batch)
    loss = token_losses(logits, batch["targets"]).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    use_attention(model, "sdpa_dense")
    return logits.detach(), float(loss), grads


def _assert_same(result, reference):
    logits, loss, grads = result
    torch.testing.assert_close(logits, reference[0], atol=1e-5, rtol=0)
    assert loss == pytest.approx(reference[1], abs=1e-5 * max(1.0, abs(reference[1])))
    assert grads.keys() == reference[2].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[2][name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("backend", ["sdpa_varlen", "auto", "flash_varlen"])
def test_every_cpu_backend_equals_the_dense_mask(tiny, backend, stand_in):
    model, processor = tiny
    batch = _mixed_batch(processor)
    reference = _forward_backward(model, batch, "sdpa_dense")
    _assert_same(_forward_backward(model, batch, backend), reference)
    if backend == "flash_varlen":
        # One call per layer, each over the boundaries of every row (the batch flattened to B * L tokens).
        layers = model.config.text_config.num_hidden_layers
        assert len(stand_in.calls) == layers  # the kernel's own backward serves the backward pass
        cu_q, cu_k, max_q, _ = stand_in.calls[0]
        rows, length = batch["segment_ids"].shape
        assert cu_q == cu_k and cu_q[-1] == rows * length
        assert len(cu_q) - 1 == sum(len(r.unique()) for r in batch["segment_ids"]) > rows
        assert max_q == max(int(n) for r in batch["segment_ids"] for n in r.unique(return_counts=True)[1])
    else:
        assert not stand_in.calls  # auto on a CPU is sdpa_varlen, whatever kernel is importable


def test_flex_forward_equals_the_dense_mask_and_refuses_cpu_training(tiny):
    model, processor = tiny
    batch = _mixed_batch(processor)
    with torch.no_grad():
        use_attention(model, "sdpa_dense")
        reference = PackedVLM(model)(batch)
        with _attending(model, "flex"):
            torch.testing.assert_close(PackedVLM(model)(batch), reference, atol=1e-5, rtol=0)
    with _attending(model, "flex"), pytest.raises(UsageError, match="model.attn=flex has no backward on CPU"):
        PackedVLM(model)(batch)


def test_flash_varlen_without_a_kernel_and_unknown_backends_are_refused(tiny):
    model, processor = tiny
    batch = _mixed_batch(processor)
    if attention.varlen_kernel() is None:
        with _attending(model, "flash_varlen"), pytest.raises(UsageError, match="model.attn=flash_varlen needs CUDA"):
            PackedVLM(model)(batch)
    with pytest.raises(UsageError, match="model.attn"):
        use_attention(model, "flash_attention_2")


def test_layout_spans_cover_every_row_and_branches_see_their_prefix():
    segments = torch.tensor([[1, 1, 2, 3, 3, 0], [1, 2, 2, 2, 3, 3]])
    prefixes = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]])
    layout = Layout.of(segments, prefixes)
    assert layout.spans == [(0, 0, 2, 0, 0), (0, 2, 3, 0, 2), (0, 3, 5, 0, 2), (0, 5, 6, 5, 5),
                            (1, 0, 1, 0, 0), (1, 1, 4, 1, 1), (1, 4, 6, 4, 4)]
    assert layout.cu_seq_lens_q.tolist() == [0, 2, 3, 5, 6, 7, 10, 12]
    assert layout.cu_seq_lens_k.tolist() == [0, 2, 5, 9, 10, 11, 14, 16]
    assert layout.key_index.tolist() == [0, 1, 0, 1, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert (layout.max_length_q, layout.max_length_k) == (3, 4)
    mask = attention.block_causal_mask(segments, prefixes)[0, 0]
    assert mask[3].tolist() == [True, True, False, True, False, False]  # branch 3 sees its prefix and itself
    with pytest.raises(UsageError, match="contiguous"):
        Layout.of(torch.tensor([[1, 2, 1]]))


# Shared-prompt RL rows ---------------------------------------------------------------------------------------


def _groups(make_image):
    """Two image prompts with 3 responses each, of unequal lengths."""
    prompts, groups = [], []
    for p in range(2):
        sample = {"type": "grounding", "messages": chat([image(), text(f"Where is thing {p}?")], "")[:1],
                  "images": [make_image(seed=p)], "videos": []}
        prompts.append(Prompt(f"k{p}", "grounding_box", [0, 0, 1, 1], sample))
        rng = torch.Generator().manual_seed(p)
        groups.append([Completion(torch.randint(10, 200, (n,), generator=rng).tolist(), "", True)
                       for n in (3 + p, 9, 6 - p)])
    return prompts, groups


def _counting_visual(model, counts: list):
    visual = model.model.visual
    forward = visual.forward

    def counted(pixels, grid_thw=None, **kwargs):
        counts.append(len(grid_thw))
        return forward(pixels, grid_thw=grid_thw, **kwargs)

    visual.forward = counted
    return lambda: setattr(visual, "forward", forward)


def _rl_update(model, batch, backend):
    use_attention(model, backend)
    model.zero_grad()
    learned = batch["targets"] != IGNORE
    logp = -token_losses(PackedVLM(model)(batch, learned), batch["targets"][learned])
    loss, _ = policy_loss(logp, batch["advantages"][learned], batch["coef"][learned], LossConfig())
    loss.backward()
    use_attention(model, "sdpa_dense")
    return float(loss), sorted(logp.tolist()), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("backend", ["sdpa_dense", "sdpa_varlen", "flash_varlen"])
def test_shared_prompt_rows_give_the_unshared_loss_and_gradients(tiny, make_image, backend, stand_in):
    model, processor = tiny
    prompts, groups = _groups(make_image)
    advantages = group_advantages(torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.9, 0.1]]))
    batches = {share: rollout_batches(prompts, groups, advantages, processor, seq_len=2048, share_prompt=share)[0]
               for share in (False, True)}
    shared, unshared = batches[True], batches[False]
    responses = sum(len(g) for g in groups)
    # The update's tokens: (p - 1) + sum of r over the group instead of G * p + sum of r.
    prompt_tokens = [encode_prompt(p.sample, processor)["input_ids"].shape[1] for p in prompts]
    real = {share: int((b["segment_ids"] > 0).sum()) for share, b in batches.items()}
    response_tokens = sum(len(c.token_ids) for g in groups for c in g)
    assert real[False] == sum(len(g) * p for g, p in zip(groups, prompt_tokens)) + response_tokens
    assert real[True] == sum(p - 1 for p in prompt_tokens) + response_tokens
    assert (shared["targets"] != IGNORE).sum() == (unshared["targets"] != IGNORE).sum() == response_tokens
    assert shared["image_grid_thw"].shape[0] == len(prompts) and unshared["image_grid_thw"].shape[0] == responses

    counts = []
    restore = _counting_visual(model, counts)
    try:
        reference = _rl_update(model, unshared, "sdpa_dense")
        result = _rl_update(model, shared, backend)
    finally:
        restore()
    assert counts == [responses, len(prompts)]  # images through the vision tower: once per prompt when shared
    assert result[0] == pytest.approx(reference[0], abs=1e-6)
    assert result[1] == pytest.approx(reference[1], abs=1e-5)
    for name, grad in result[2].items():
        torch.testing.assert_close(grad, reference[2][name], atol=1e-5, rtol=1e-5, msg=name)


def test_a_response_continues_its_prompts_positions(tiny, make_image):
    """MRoPE and text positions of each sampled token are those of prompt + response in one sequence (what
    vLLM gives the tokens it samples), shared or not."""
    model, processor = tiny
    prompts, groups = _groups(make_image)
    advantages = torch.zeros(2, 3)
    by_response = {}
    for share in (False, True):
        batch = rollout_batches(prompts, groups, advantages, processor, seq_len=2048, share_prompt=share)[0]
        positions = packed_position_ids(model, batch)
        responses = {}
        for b, row in enumerate(batch["segment_ids"]):
            for segment in row.unique().tolist():
                learned = (row == segment) & (batch["targets"][b] != IGNORE)
                if learned.any():
                    responses[tuple(batch["targets"][b, learned].tolist())] = positions[:, b, learned]
        by_response[share] = responses
    assert by_response[True].keys() == by_response[False].keys()
    assert len(by_response[True]) == sum(len(g) for g in groups)
    for response, unshared in by_response[False].items():
        assert torch.equal(by_response[True][response], unshared)


def test_a_group_longer_than_a_row_repeats_its_prompt(tiny, make_image):
    model, processor = tiny
    prompts, groups = _groups(make_image)
    one = rollout_batches(prompts[:1], groups[:1], torch.zeros(1, 3), processor, seq_len=2048, share_prompt=True)[0]
    prompt_tokens = int((one["prefix_ids"] == 0).logical_and(one["segment_ids"] > 0).sum())
    tight = prompt_tokens + 12  # room for the prompt and two of its three responses (3, 9, 6 tokens)
    batch = rollout_batches(prompts[:1], groups[:1], torch.zeros(1, 3), processor, seq_len=tight, share_prompt=True)[0]
    assert batch["image_grid_thw"].shape[0] == 2  # the prompt twice
    assert int((batch["targets"] != IGNORE).sum()) == 3 + 9 + 6
