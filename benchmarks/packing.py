"""Packed vs padded batches: packing efficiency and training tokens per second, side by side in one process.

    python benchmarks/packing.py                      # 8K rows, the stage-3 synthetic mix, tiny model
    python benchmarks/packing.py --seq-len 2048 --steps 5
    python benchmarks/packing.py --model small        # a ~30M-parameter model: linear layers dominate

Packed: samples best-fit into rows of --seq-len tokens (what training uses). Padded: one sample per row, each
batch padded to its longest sample, with as many rows as hold about the same number of real tokens.
Efficiency is the share of non-pad tokens; tokens/s counts real tokens through forward + backward.
"""

import argparse
import itertools
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
from mimovl.model.build import build_tiny  # noqa: E402
from mimovl.model.packed import PackedVLM, token_losses  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--pack-buffer", type=int, default=256)
    parser.add_argument("--model", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, processor = build_tiny(seed=0, **SIZES[args.model])
    net = PackedVLM(model.train())
    pad = processor.tokenizer.pad_token_id
    with tempfile.TemporaryDirectory() as root:
        shards = write_synthetic(root, n_per_type=200)
        sources = {t: {"urls": shards[t], "weight": 1.0} for t in SAMPLE_TYPES}

        def samples():
            return (encode(s, processor) for s in mixed_stream(sources, seed=0, shuffle_buffer=100))

        rows = pack_rows(samples(), args.seq_len, args.pack_buffer)
        packed = (collate_rows([row], args.seq_len, pad) for row in rows)
        results = {
            "packed": measure(net, packed, args.steps),
            "padded": measure(net, padded_batches(samples(), args.seq_len, pad), args.steps),
        }
    for name, r in results.items():
        print(f"{name:7s} model={args.model} seq_len={args.seq_len} "
              f"efficiency={r['efficiency']:.3f} tokens/s={r['tokens_per_s']:.0f}")
    ratio = results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"]
    print(f"packed/padded tokens/s ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
