"""Packed vs padded batches: packing efficiency and training tokens per second, side by side in one process.

    python benchmarks/packing.py                      # 8K rows, the synthetic mix, the tiny and the ~30M model
    python benchmarks/packing.py --seq-len 2048 --steps 5 --models tiny

Packed: samples best-fit into rows of --seq-len tokens (what training uses), with the dense (L, L) mask
(`model.attn=sdpa_dense`) and with per-sample attention (`sdpa_varlen`, what `auto` runs on a CPU). Padded: one
sample per row, each batch padded to its longest sample, as many rows as hold about the same number of real
tokens, under transformers' sdpa with a padding mask. Efficiency is the share of non-pad tokens; tokens/s counts
real tokens through forward + backward. The ways are measured in turns, --rounds times, and each reported by
its median, so a slow spell of a shared machine hits all of them. The last line is machine-readable:
`packed_vs_padded_tokens_per_s=<ratio>` (sdpa_varlen packed over padded, the last model measured).
"""

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from mimovl.data.encode import encode  # noqa: E402
from mimovl.data.packing import Row, collate_rows, pack_rows  # noqa: E402
from mimovl.data.schema import SAMPLE_TYPES  # noqa: E402
from mimovl.data.stream import mixed_stream  # noqa: E402
from mimovl.data.synthetic import write_synthetic  # noqa: E402
from mimovl.model.attention import use_attention  # noqa: E402
from mimovl.model.build import build_tiny  # noqa: E402
from mimovl.model.logits import token_losses  # noqa: E402
from mimovl.model.packed import PackedVLM  # noqa: E402


# build_tiny sizes: "tiny" is the test model; "small" has ~30M parameters.
SIZES = {
    "tiny": {},
    "small": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4, "intermediate_size": 1536,
              "vision_hidden_size": 256, "vision_depth": 4, "vision_heads": 4, "vision_intermediate_size": 512},
}


def padded_batches(samples, tokens_per_batch: int, pad_id: int):
    """One sample per row, rows padded to the batch's longest sample, ~tokens_per_batch real tokens a batch."""
    while True:
        rows, real = [], 0
        for sample in samples:
            rows.append(Row([sample]))
            real += len(sample)
            if real >= tokens_per_batch:
                break
        if not rows:
            return
        yield collate_rows(rows, max(r.length for r in rows), pad_id)


def measure(net, batches, steps: int) -> dict:
    real = total = 0
    elapsed = 0.0
    for batch in itertools.islice(batches, steps + 1):
        start = time.perf_counter()
        losses = token_losses(net(batch), batch["targets"])
        losses.sum().backward()
        spent = time.perf_counter() - start
        if total or real:  # the first batch warms up and is not timed
            elapsed += spent
        n_real = int((batch["segment_ids"] > 0).sum())
        real, total = real + n_real, total + batch["segment_ids"].numel()
    return {"efficiency": real / total, "tokens_per_s": real / max(elapsed, 1e-9)}


# (name, attention backend, packed?)
WAYS = (("packed_dense", "sdpa_dense", True), ("packed_varlen", "sdpa_varlen", True), ("padded", "sdpa_dense", False))


def compare(model_size: str, seq_len: int, steps: int, rounds: int, pack_buffer: int, root: str) -> dict:
    """Median efficiency and tokens/s of each of WAYS for one model."""
    torch.manual_seed(0)
    model, processor = build_tiny(seed=0, **SIZES[model_size])
    net = PackedVLM(model.train())
    pad = processor.tokenizer.pad_token_id
    shards = write_synthetic(root, n_per_type=200)
    sources = {t: {"urls": shards[t], "weight": 1.0} for t in SAMPLE_TYPES}

    def samples(seed: int):
        return (encode(s, processor) for s in mixed_stream(sources, seed=seed, shuffle_buffer=100))

    measured = {name: [] for name, _, _ in WAYS}
    for r in range(rounds):
        for name, backend, packed in WAYS:
            use_attention(model, backend)
            if packed:
                batches = (collate_rows([row], seq_len, pad) for row in pack_rows(samples(r), seq_len, pack_buffer))
            else:
                batches = padded_batches(samples(r), seq_len, pad)
            measured[name].append(measure(net, batches, steps))
    return {name: {key: statistics.median(m[key] for m in runs) for key in runs[0]}
            for name, runs in measured.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pack-buffer", type=int, default=256)
    parser.add_argument("--models", nargs="+", choices=sorted(SIZES), default=["tiny", "small"])
    args = parser.parse_args()
    ratio = None
    for size in args.models:
        with tempfile.TemporaryDirectory() as root:
            results = compare(size, args.seq_len, args.steps, args.rounds, args.pack_buffer, root)
        for name, r in results.items():
            print(f"{name:13s} model={size} seq_len={args.seq_len} "
                  f"efficiency={r['efficiency']:.3f} tokens/s={r['tokens_per_s']:.0f}")
        padded = results["padded"]["tokens_per_s"]
        ratio = results["packed_varlen"]["tokens_per_s"] / padded
        print(f"model={size}: packed_dense/padded {results['packed_dense']['tokens_per_s'] / padded:.2f}, "
              f"packed_varlen/padded {ratio:.2f}, packed_varlen/packed_dense "
              f"{results['packed_varlen']['tokens_per_s'] / results['packed_dense']['tokens_per_s']:.2f}")
    print(f"packed_vs_padded_tokens_per_s={ratio:.3f}")


if __name__ == "__main__":
    main()
