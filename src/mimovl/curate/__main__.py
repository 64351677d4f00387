"""The curate command: `python -m mimovl.curate <step> --input PATTERN --out 'DIR/name-%06d.tar' [options]`.

Exit status 0 when the step ran or was already done, 2 for a usage error (the message says what to fix).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import mimovl.curate
from mimovl.curate.balance import DEFAULT_T, Balance
from mimovl.curate.decontam import Decontam
from mimovl.curate.dedup import Dedup
from mimovl.curate.ocr_augment import OcrAugment, OcrAugmentConfig
from mimovl.curate.options import add_config_flags, config_from_args
from mimovl.curate.phash import DEFAULT_MAX_DISTANCE
from mimovl.curate.recaption import DEFAULT_PROMPT, Recaption
from mimovl.curate.runner import REPORT, Step, run_step
from mimovl.curate.textfilter import FilterConfig, TextFilter
from mimovl.data.schema import SAMPLE_TYPES
from mimovl.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mimovl.curate", description=mimovl.curate.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name: str, help: str) -> argparse.ArgumentParser:
        p = steps.add_parser(name, help=help, description=help)
        p.add_argument("--input", action="append", required=True,
                       help="input shards: a glob, brace pattern or path (repeatable)")
        p.add_argument("--out", required=True, help="output shard pattern, e.g. 'cur/dedup/cap-%%06d.tar'; "
                                                    f"{REPORT} goes beside it")
        p.add_argument("--maxcount", type=int, default=1000, help="samples per output shard at most")
        p.add_argument("--types", help=f"comma-separated sample types to work on (others pass unchanged); "
                                       f"of {', '.join(SAMPLE_TYPES)}")
        p.add_argument("--force", action="store_true", help="run even when the report says done")
        p.add_argument("--progress", action="store_true", help="show a progress bar")
        return p

    p = step("dedup", "drop samples with an image near (phash) an image already kept")
    p.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE, help="largest Hamming distance "
                   f"(of 64 bits) that counts as a duplicate (default {DEFAULT_MAX_DISTANCE})")
    p = step("decontam", "drop samples with an image near an evaluation image")
    p.add_argument("--eval", action="append", required=True,
                   help="evaluation shards (pattern) or a directory of images (repeatable)")
    p.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE,
                   help=f"largest Hamming distance that counts as a match (default {DEFAULT_MAX_DISTANCE})")
    p = step("filter", "drop samples whose supervised text is too short or long, noisy or repetitive")
    add_config_flags(p, FilterConfig)
    p = step("balance", "MetaCLIP concept balancing (types default: caption)")
    p.add_argument("--concepts", help="concept list, one entry a line (default: derived from the captions)")
    p.add_argument("--t", type=int, default=DEFAULT_T, help=f"MetaCLIP's t: samples kept per head concept "
                                                            f"(default {DEFAULT_T})")
    p.add_argument("--seed", type=int, default=0, help="seed of the keep draws (with each sample key)")
    p.add_argument("--min-count", type=int, default=2, help="derived concepts: seen in at least this many samples")
    p.add_argument("--keep-unmatched", action="store_true", help="keep samples that match no concept")
    p = step("ocr_augment", "harder OCR images (handwriting, occlusion, warps, blur) with their boxes moved")
    add_config_flags(p, OcrAugmentConfig)
    p = step("recaption", "caption images again with a model via vLLM (types default: caption)")
    p.add_argument("--model", required=True, help="a Qwen2.5-VL-format model directory")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the user text after the image ({DEFAULT_PROMPT!r})")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest caption in tokens")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    p.add_argument("--dtype", default="bfloat16", help="engine dtype (float32 on CPU)")
    p.add_argument("--max-model-len", type=int, default=4096, help="prompt + caption tokens the engine admits")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.8, help="the engine's share of GPU memory")
    add_config_flags(p, FilterConfig)
    return parser


def make_step(args: argparse.Namespace) -> Step:
    types = None
    if args.types:
        types = [t.strip() for t in args.types.split(",") if t.strip()]
        unknown = sorted(set(types) - set(SAMPLE_TYPES))
        if unknown:
            raise UsageError(f"--types: unknown sample type(s) {unknown}; known: {', '.join(SAMPLE_TYPES)}")
    if args.step == "dedup":
        return Dedup(args.max_distance, types=types)
    if args.step == "decontam":
        return Decontam(args.eval, args.max_distance, types=types)
    if args.step == "filter":
        return TextFilter(config_from_args(FilterConfig, args), types=types)
    if args.step == "balance":
        return Balance(args.t, args.seed, args.concepts, args.min_count, args.keep_unmatched, types=types)
    if args.step == "ocr_augment":
        return OcrAugment(config_from_args(OcrAugmentConfig, args), types=types)
    settings = {"dtype": args.dtype, "max_model_len": args.max_model_len,
                "gpu_memory_utilization": args.gpu_memory_utilization}
    return Recaption(args.model, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, config=config_from_args(FilterConfig, args),
                     engine_settings=settings, types=types)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        step = make_step(args)
        report = run_step(step, args.input, args.out, args.maxcount, force=args.force, progress=args.progress)
    except UsageError as error:
        print(f"[mimovl] error: {error}", file=sys.stderr)
        return 2
    counts = report["counts"]
    state = "already done, nothing to do" if report["skipped"] else f"done in {report['seconds']:.1f} s"
    print(f"{step.name}: {state}; {counts['in']} in, {counts['out']} out, removed {counts['removed_by_reason']}, "
          f"modified {counts['modified']}; {len(report['outputs'])} shards; report: "
          f"{os.path.join(os.path.dirname(args.out), REPORT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
