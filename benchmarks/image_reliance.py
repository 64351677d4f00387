"""Does a policy read its images? The answer's log-likelihood with the sample's own image against another
sample's image of the same type, and how much of the vision tower's output depends on the picture at all.

    python benchmarks/image_reliance.py outputs/mimo_vl/s4/hf            # any Qwen2.5-VL export
    python benchmarks/image_reliance.py DIR --types grounding,gui,qa --samples 24

Per sample type: the mean teacher-forced log-likelihood of the reference answer (`mimovl.data.encode`'s learned
tokens) given its own image and given the image of the next held-out sample (same question, same answer). A
policy that uses the picture scores its own image higher; equal figures mean the answer is a prior of the
question alone, which RL cannot turn into a skill. Then, over the same images, the vision tower's output tokens:
their mean norm and their mean distance to the average token over all images (the part that carries the
picture; the rest is a constant the language model can learn to ignore). Synthetic held-out samples
(`mimovl.data.synthetic.make_sample`, split "heldout"), generated on the fly.
"""

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mimovl.data.encode import IGNORE, encode  # noqa: E402
from mimovl.data.synthetic import make_sample  # noqa: E402
from mimovl.model.build import load_hf  # noqa: E402


def answer_logp(model, processor, sample: dict) -> float:
    """Sum of log p of the sample's learned (answer) tokens, teacher-forced."""
    encoded = encode(sample, processor)
    with torch.no_grad():
        logits = model(input_ids=encoded.input_ids[None], pixel_values=encoded.pixel_values,
                       image_grid_thw=encoded.image_grid_thw, mm_token_type_ids=encoded.mm_token_type_ids[None]).logits
    learned = encoded.targets != IGNORE
    logp = logits[0].float().log_softmax(-1)[learned]
    return float(logp.gather(-1, encoded.targets[learned, None]).sum())


def vision_tokens(model, processor, image) -> torch.Tensor:
    """The vision tower's (merged, projected) output tokens for one image."""
    features = processor.image_processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.model.visual(features["pixel_values"], grid_thw=features["image_grid_thw"])
    return getattr(out, "pooler_output", out).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy", type=Path, help="a Qwen2.5-VL directory (a stage's hf/ export)")
    parser.add_argument("--types", default="grounding,gui,qa,reasoning", help="image sample types, comma-separated")
    parser.add_argument("--samples", type=int, default=12, help="held-out samples per type")
    args = parser.parse_args()
    model, processor = load_hf(args.policy)
    model.eval()
    tokens = []
    print(f"{'type':<12}{'own image':>12}{'other image':>13}{'difference':>12}   (mean answer log-likelihood)")
    for sample_type in args.types.split(","):
        samples = [make_sample(sample_type, k, split="heldout") for k in range(args.samples + 1)]
        own = [answer_logp(model, processor, s) for s in samples[:-1]]
        swapped = [answer_logp(model, processor, {**s, "images": samples[k + 1]["images"]})
                   for k, s in enumerate(samples[:-1])]
        tokens += [vision_tokens(model, processor, s["images"][0]) for s in samples[:-1]]
        mean_own, mean_other = sum(own) / len(own), sum(swapped) / len(swapped)
        print(f"{sample_type:<12}{mean_own:>12.3f}{mean_other:>13.3f}{mean_own - mean_other:>12.3f}")
    stacked = torch.stack([t for t in tokens if t.shape == tokens[0].shape])
    average = stacked.mean(dim=(0, 1))
    norm = float(stacked.norm(dim=-1).mean())
    spread = float((stacked - average).norm(dim=-1).mean())
    print(f"vision tokens: mean norm {norm:.3f}, mean distance to the average token {spread:.3f} "
          f"(picture-dependent share {spread / norm:.3f})")


if __name__ == "__main__":
    main()
