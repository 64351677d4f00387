"""Can a tiny model learn to read a task's pictures? Train a fresh `build_tiny` model on one synthetic task and
watch the held-out answer loss with each sample's own picture against another sample's picture.

    python benchmarks/learnability.py --type qa --variant 0                 # counting, on build_tiny's defaults
    python benchmarks/learnability.py --type grounding --model num_layers=4 rope_theta=10
    python benchmarks/learnability.py --type video --steps 300 --lr 1e-3

Every step trains on `--batch` new samples (split "train", never repeated), so a falling loss is learning, not
memorising. Every `--every` steps it prints the mean held-out answer loss (summed over the answer's tokens) given
the sample's own picture and given the next held-out sample's picture. Equal figures mean the model answers
from the question alone: RL on that task can only learn the answers' prior, never the skill. `--variant` picks
one maker of a type with several (qa: 0 counting, 1 colours, 2 sums; reasoning: 0 math, 1 counting).
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml
from huggingface_hub.errors import StrictDataclassError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mimovl.data.encode import IGNORE, encode  # noqa: E402
from mimovl.data.synthetic import make_sample  # noqa: E402
from mimovl.data.synthetic.tasks import _MAKERS  # noqa: E402
from mimovl.data.packing import Row, collate_rows  # noqa: E402
from mimovl.model.build import build_tiny  # noqa: E402
from mimovl.model.packed import PackedVLM  # noqa: E402


def answer_loss(vlm: PackedVLM, processor, samples: list[dict]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the samples' learned (answer) tokens and their number, through the packed forward
    the training stages use (the samples in one row)."""
    encoded = [encode(s, processor) for s in samples]
    batch = collate_rows([Row(samples=encoded)], sum(map(len, encoded)), processor.tokenizer.pad_token_id)
    learned = batch["targets"] != IGNORE
    return vlm(batch, positions=learned, losses=True).sum(), int(learned.sum())


def swapped(sample: dict, other: dict) -> dict:
    return {**sample, "images": other["images"], "videos": other["videos"]}


def parse_value(text: str):
    """A key=value override's value: YAML (4, [1], true), and 1e6 as a number (YAML reads it as a string)."""
    value = yaml.safe_load(text)
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def fail(message: str) -> None:
    print(f"[mimovl] error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", default="qa", help="synthetic sample type with a picture (qa, grounding, ...)")
    parser.add_argument("--variant", type=int, default=0, help="which of the type's makers")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="new samples per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=25, help="evaluate every this many steps")
    parser.add_argument("--heldout", type=int, default=16, help="held-out samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", nargs="*", default=[], help="build_tiny key=value overrides")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.type not in _MAKERS:
        fail(f"--type {args.type}: not a synthetic sample type ({', '.join(sorted(_MAKERS))})")
    variants = len(_MAKERS[args.type])
    if not 0 <= args.variant < variants:
        fail(f"--variant {args.variant}: --type {args.type} has {variants} variant(s), 0 to {variants - 1}")
    index = lambda k: k * variants + args.variant  # noqa: E731
    kwargs = {key: parse_value(value) for key, _, value in (pair.partition("=") for pair in args.model)}
    try:
        model, processor = build_tiny(seed=args.seed, **kwargs)
    except (TypeError, ValueError, StrictDataclassError) as error:
        fail(f"--model {' '.join(args.model)}: {' '.join(str(error).split())}")
    vlm = PackedVLM(model.train())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    held = [make_sample(args.type, index(k), split="heldout") for k in range(args.heldout + 1)]
    if not (held[0]["images"] or held[0]["videos"]) or not (encode(held[0], processor).targets != IGNORE).any():
        fail(f"--type {args.type}: its samples have no picture or no answer to learn")

    def evaluate() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            own = sum(float(answer_loss(vlm, processor, [s])[0]) for s in held[:-1])
            other = sum(float(answer_loss(vlm, processor, [swapped(s, nxt)])[0]) for s, nxt in zip(held, held[1:]))
        model.train()
        return own / args.heldout, other / args.heldout

    print(f"{args.type} variant {args.variant}, build_tiny({kwargs}), lr {args.lr}, {args.batch} samples per step")
    print(f"{'step':>6}{'own picture':>13}{'other picture':>15}{'gap':>8}{'seconds':>9}")
    start = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            own, other = evaluate()
            print(f"{step:>6}{own:>13.3f}{other:>15.3f}{other - own:>8.3f}{time.perf_counter() - start:>9.0f}",
                  flush=True)
        if step == args.steps:
            break
        optimizer.zero_grad()
        samples = [make_sample(args.type, index(step * args.batch + b), seed=args.seed + 1) for b in range(args.batch)]
        loss, tokens = answer_loss(vlm, processor, samples)
        (loss / tokens).backward()
        optimizer.step()


if __name__ == "__main__":
    main()
