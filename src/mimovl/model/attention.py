"""Attention over packed rows: one backend per way of computing it, registered with transformers.

A packed row holds several samples; each attends causally to itself and to nothing else, except that a
*branch* (a sampled response packed after a shared prompt, `mimovl.rl.batch`) also attends to its prefix (the
prompt). `Layout.of` reads that from the batch once per forward; every backend computes the same thing from it:

    sdpa_dense     transformers' own sdpa with a dense (B, 1, L, L) mask: costs L^2 per row; the test reference
    sdpa_varlen    SDPA run once per sample (queries over the prefix's keys, then its own): costs the sum of the
                   samples' squares; the CPU path
    flash_varlen   one varlen kernel call over every sample of every row (`cu_seq_lens_q/k`, `max_length_q/k`),
                   branch keys gathered behind their prefix's: torch's `varlen_attn` on CUDA, else flash-attn
    flex           `flex_attention` with a block mask (compiled on CUDA); it has no backward on CPU
    auto           flash_varlen on CUDA where a kernel is installed, else sdpa_varlen

`use_attention(model, name)` sets the language model's attention (`config._attn_implementation`) to the
backend's registered function; the vision tower keeps its own (it already runs per image or window). Called
without a layout (transformers' `generate`, one unpacked sequence per row), every backend is plain sdpa.
"""

import functools
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mimovl.errors import UsageError, require

BACKENDS = ("auto", "sdpa_dense", "sdpa_varlen", "flash_varlen", "flex")

# transformers' names are looked up by substring in places ("flash", "flex_attention"): ours avoid both.
REGISTERED = {"auto": "mimovl_auto", "sdpa_varlen": "mimovl_sdpa_varlen",
              "flash_varlen": "mimovl_kernel_varlen", "flex": "mimovl_blockmask"}


@dataclass
class Layout:
    """Where the samples of a packed batch lie, built once per forward and shared by every layer.

    spans: (row, start, end, prefix_start, prefix_end) per sample, in row order, covering every row (padding is
        a sample of its own); prefix_end == prefix_start: no prefix.
    The varlen view flattens the batch to B * L tokens: sample k's queries are `cu_seq_lens_q[k]:[k + 1]`, its
    keys `key_index[cu_seq_lens_k[k]:[k + 1]]` (its prefix's positions, then its own).
    """

    rows: int
    length: int
    spans: list[tuple[int, int, int, int, int]]
    segment_ids: torch.Tensor
    prefix_ids: torch.Tensor | None
    cu_seq_lens_q: torch.Tensor
    cu_seq_lens_k: torch.Tensor
    max_length_q: int
    max_length_k: int
    key_index: torch.Tensor | None  # None: every sample's keys are its queries' positions
    row_lengths: list[list[int]]  # each row's span lengths, in order
    prefix_index: dict[int, int]  # span i (a branch) -> the index of its prefix's span within the row
    masks: dict[int, torch.Tensor]  # span i (a branch) -> its (queries, prefix + queries) bool mask
    block_mask: object = None  # flex's BlockMask, made by the first layer that needs it

    @classmethod
    def of(cls, segment_ids: torch.Tensor, prefix_ids: torch.Tensor | None = None) -> "Layout":
        """From (B, L) `segment_ids` (1.. per sample, 0 = padding) and optional (B, L) `prefix_ids` (per token:
        the segment it also attends to, 0 = none; constant over a sample)."""
        rows, length = segment_ids.shape
        spans = []
        cpu_segments = segment_ids.cpu()
        cpu_prefix = prefix_ids.cpu() if prefix_ids is not None else None
        for b in range(rows):
            values, counts = torch.unique_consecutive(cpu_segments[b], return_counts=True)
            require(values.numel() == values.unique().numel(), "segment_ids", f"row {b}",
                    "each sample must be one contiguous run of a row")
            where, start = {}, 0
            for value, count in zip(values.tolist(), counts.tolist()):
                where[value] = (start, start + count)
                start += count
            for value, (start, end) in where.items():
                prefix = int(cpu_prefix[b, start]) if cpu_prefix is not None else 0
                if prefix:
                    require(prefix in where and where[prefix][1] <= start, "prefix_ids", f"row {b}",
                            "a branch's prefix must be a sample before it in the same row")
                    spans.append((b, start, end, *where[prefix]))
                else:
                    spans.append((b, start, end, start, start))
        q_lens = [end - start for _, start, end, _, _ in spans]
        k_lens = [end - start + pe - ps for _, start, end, ps, pe in spans]
        device = segment_ids.device
        key_index = None
        if any(pe > ps for *_, ps, pe in spans):
            key_index = torch.cat([torch.cat([torch.arange(ps, pe), torch.arange(start, end)]) + b * length
                                   for b, start, end, ps, pe in spans]).to(device)
        row_lengths = [[end - start for row, start, end, _, _ in spans if row == b] for b in range(rows)]
        starts = [[start for row, start, *_ in spans if row == b] for b in range(rows)]
        prefix_index, masks = {}, {}
        for i, (b, start, end, ps, pe) in enumerate(spans):
            if pe > ps:
                prefix_index[i] = starts[b].index(ps)
                masks[i] = torch.ones(end - start, pe - ps + end - start, dtype=torch.bool, device=device).tril(pe - ps)
        return cls(rows, length, spans, segment_ids, prefix_ids, _cumulative(q_lens, device),
                   _cumulative(k_lens, device), max(q_lens), max(k_lens), key_index, row_lengths, prefix_index,
                   masks)


def _cumulative(lengths: list[int], device) -> torch.Tensor:
    return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)


def block_causal_mask(segment_ids: torch.Tensor, prefix_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, L, L) bool, sdpa_dense's mask: query i sees key j when both are in one sample and j <= i, or
    when j is in i's prefix. Padding (segment 0) attends within the padding only, which keeps its rows finite."""
    length = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    mask = same & causal
    if prefix_ids is not None:
        mask |= (prefix_ids[:, :, None] == segment_ids[:, None, :]) & (prefix_ids[:, :, None] > 0)
    return mask[:, None]


def _check_call(module, kwargs: dict) -> None:
    if kwargs.get("sliding_window") is not None:
        raise UsageError("model.attn: packed varlen attention has no sliding window; use model.attn=sdpa_dense")


def sdpa_varlen(module, query, key, value, attention_mask, scaling=None, dropout=0.0, layout=None, **kwargs):
    """SDPA once per sample: its queries over its prefix's keys and its own (causal, aligned to the end).

    Rows are cut into samples with `unbind` and `split`, whose backward is one stack and one cat (a slice per
    sample would allocate a full-size gradient per sample)."""
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    _check_call(module, kwargs)
    gqa = query.shape[1] != key.shape[1]
    pieces = {name: [list(row.split(layout.row_lengths[b], dim=1)) for b, row in enumerate(tensor.unbind(0))]
              for name, tensor in (("q", query), ("k", key), ("v", value))}
    rows: list[list[torch.Tensor]] = [[] for _ in range(layout.rows)]
    for i, (b, start, end, ps, pe) in enumerate(layout.spans):
        j = len(rows[b])  # this span's index in its row
        q, k, v = (pieces[name][b][j][None] for name in "qkv")
        if pe > ps:
            p = layout.prefix_index[i]
            k = torch.cat([pieces["k"][b][p][None], k], dim=2)
            v = torch.cat([pieces["v"][b][p][None], v], dim=2)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=layout.masks[i],
                                                                   dropout_p=dropout, scale=scaling, enable_gqa=gqa)
        else:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True,
                                                                   scale=scaling, enable_gqa=gqa)
        rows[b].append(out[0])
    out = torch.stack([torch.cat(parts, dim=1) for parts in rows])
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def varlen_kernel():
    """The installed varlen kernel as `(q, k, v, cu_q, cu_k, max_q, max_k, scale) -> out` over (T, H, D)
    tensors, causal aligned to the end of each key sequence (bottom-right, as flash attention defines it
    when a sample has more keys than queries); None when there is none (no CUDA, no flash-attn)."""
    if not torch.cuda.is_available():
        return None
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        flash_attn_varlen_func = None
    if flash_attn_varlen_func is not None:
        return lambda q, k, v, cu_q, cu_k, max_q, max_k, scale: flash_attn_varlen_func(
            q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=True)
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return lambda q, k, v, cu_q, cu_k, max_q, max_k, scale: varlen_attn(
        q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1])


def flash_varlen(module, query, key, value, attention_mask, scaling=None, dropout=0.0, layout=None, **kwargs):
    """One varlen kernel call over the whole batch: (B, H, L, D) flattened to (B * L, H, D)."""
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    _check_call(module, kwargs)
    kernel = varlen_kernel()
    if kernel is None:
        raise UsageError("model.attn=flash_varlen needs CUDA with torch's varlen_attn or flash-attn; "
                         "use model.attn=auto")
    rows, heads, length, dim = query.shape
    flat = lambda t: t.transpose(1, 2).reshape(rows * length, t.shape[1], dim)  # noqa: E731
    q, k, v = flat(query), flat(key), flat(value)
    if layout.key_index is not None:
        k, v = k.index_select(0, layout.key_index), v.index_select(0, layout.key_index)
    out = kernel(q, k, v, layout.cu_seq_lens_q, layout.cu_seq_lens_k, layout.max_length_q, layout.max_length_k,
                 scaling)
    return out.view(rows, length, heads, dim), None


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex(module, query, key, value, attention_mask, scaling=None, dropout=0.0, layout=None, **kwargs):
    """flex_attention with a block mask of the layout (compiled on CUDA; eager, forward only, on CPU)."""
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    _check_call(module, kwargs)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad:
        raise UsageError("model.attn=flex has no backward on CPU (torch's FlexAttention); use model.attn=auto")
    segments, prefixes = layout.segment_ids, layout.prefix_ids

    def mask_mod(b, h, q, kv):
        own = (segments[b, q] == segments[b, kv]) & (kv <= q)
        if prefixes is None:
            return own
        return own | ((prefixes[b, q] == segments[b, kv]) & (prefixes[b, q] > 0))

    if layout.block_mask is None:  # once per forward, shared by the layers
        layout.block_mask = create_block_mask(mask_mod, layout.rows, None, layout.length, layout.length,
                                              device=query.device)
    attend = _compiled_flex() if query.device.type == "cuda" else flex_attention
    out = attend(query, key, value, block_mask=layout.block_mask, scale=scaling,
                 enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def auto(module, query, key, value, attention_mask, **kwargs):
    """flash_varlen where a kernel is installed (CUDA), else sdpa_varlen."""
    backend = flash_varlen if query.device.type == "cuda" and varlen_kernel() is not None else sdpa_varlen
    return backend(module, query, key, value, attention_mask, **kwargs)


for _name, _function in (("auto", auto), ("sdpa_varlen", sdpa_varlen), ("flash_varlen", flash_varlen),
                         ("flex", flex)):
    AttentionInterface.register(REGISTERED[_name], _function)
    AttentionMaskInterface.register(REGISTERED[_name], sdpa_mask)  # generate's padding masks, as for sdpa


def use_attention(model, backend: str) -> None:
    """Sets the language model of a Qwen2.5-VL `model` to compute attention with `backend` (BACKENDS)."""
    require(backend in BACKENDS, "model.attn", backend, f"one of {BACKENDS}")
    text = model.config.text_config
    text._attn_implementation = REGISTERED.get(backend, "sdpa")


def is_varlen(model) -> bool:
    """Whether `model`'s language model runs one of the backends here that read a `Layout` (not a dense mask)."""
    return model.config.text_config._attn_implementation in REGISTERED.values()
