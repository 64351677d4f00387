"""Throughput of the curate steps (samples per second through run_step, reading and writing shards included).

    python benchmarks/curate.py                          # 200 samples each of caption, ocr, qa, text; 112x112
    python benchmarks/curate.py --n-per-type 500 --image-size 448

Input: synthetic shards (mimovl.data.synthetic): dedup, decontam and filter read all chosen types (decontam
against the "heldout" split's captions), balance the captions, ocr_augment the OCR samples. Each step runs once
in this process (one process: parallelise over shards for more); items/s counts the samples it read, removed
ones included. recaption is left out: its speed is the model's.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mimovl.curate.balance import Balance  # noqa: E402
from mimovl.curate.decontam import Decontam  # noqa: E402
from mimovl.curate.dedup import Dedup  # noqa: E402
from mimovl.curate.ocr_augment import OcrAugment  # noqa: E402
from mimovl.curate.runner import run_step  # noqa: E402
from mimovl.curate.textfilter import TextFilter  # noqa: E402
from mimovl.data.synthetic import write_synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-per-type", type=int, default=200)
    parser.add_argument("--types", default="caption,ocr,qa,text")
    parser.add_argument("--image-size", type=int, default=112, help="square images, a multiple of 28")
    parser.add_argument("--t", type=int, default=20, help="balance's t (small: the synthetic set is small)")
    args = parser.parse_args()
    types = tuple(args.types.split(","))
    size = (args.image_size, args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic(root / "data", args.n_per_type, image_size=size, types=types, shard_size=100)
        write_synthetic(root / "data", 100, image_size=size, split="heldout", types=("caption",))
        train = root / "data" / "train"
        every = str(train / "*" / "*.tar")
        steps = [
            (Dedup(), every),
            (Decontam([str(root / "data" / "heldout" / "caption" / "*.tar")]), every),
            (TextFilter(), every),
            (Balance(t=args.t), str(train / "caption" / "*.tar")),
            (OcrAugment(), str(train / "ocr" / "*.tar")),
        ]
        print(f"{len(types) * args.n_per_type} samples ({', '.join(types)}), images {size[0]}x{size[1]}")
        print(f"{'step':<12} {'samples':>8} {'seconds':>8} {'items/s':>8} {'removed':>8} {'modified':>8}  note")
        for step, inputs in steps:
            start = time.perf_counter()
            report = run_step(step, inputs, str(root / step.name / "out-%06d.tar"))
            seconds = time.perf_counter() - start
            counts = report["counts"]
            note = ", ".join(f"{k} {v}" for k, v in counts["removed_by_reason"].items())
            print(f"{step.name:<12} {counts['in']:>8} {seconds:>8.2f} {counts['in'] / seconds:>8.0f} "
                  f"{counts['removed']:>8} {counts['modified']:>8}  {note}")


if __name__ == "__main__":
    main()
