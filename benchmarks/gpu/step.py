"""GPU figures at the paper's shapes, one part at a time; a part that fails prints why and the rest go on.

    python benchmarks/gpu/step.py                 # everything (benchmarks/gpu/run.sh runs this)
    python benchmarks/gpu/step.py --parts s1 rl   # some parts

Parts (random weights, bf16 on one CUDA device, packed rows of --seq-len tokens with images):
    attention  flash_varlen and flex against sdpa_dense on 2 rows of mixed samples (bf16, loose tolerance),
               shared-prompt branches included
    s1         a stage-1 step at the 7B shape: ViT and LLM frozen, projector trained
    s3         a stage-3 step at a ~1.5B shape, everything trained
    rl         one GRPO update of 64 responses x 2K tokens at the ~1.5B shape, model.logits_chunk on and off
    sleep      vLLM's sleep and wake-up on a small engine (skipped when vLLM is not installed)
Each prints one `gpu_<part>={json}` line: tokens/s, MFU (model FLOPs / the device's bf16 peak), peak memory.
"""

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

from mimovl.data.encode import IGNORE, IMAGE  # noqa: E402
from mimovl.model.attention import use_attention  # noqa: E402
from mimovl.model.build import mrope_section, token_ids  # noqa: E402
from mimovl.model.packed import PackedVLM  # noqa: E402
from mimovl.model.parts import set_trainable  # noqa: E402
from mimovl.model.processor import build_tiny_processor  # noqa: E402

VIT = {"depth": 32, "hidden_size": 1280, "num_heads": 16, "intermediate_size": 3420, "hidden_act": "silu",
       "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112, "patch_size": 14, "spatial_merge_size": 2,
       "temporal_patch_size": 2}
SHAPES = {  # the LLM: MiMo-7B-Base, and a Qwen2.5-1.5B-sized one
    "7b": {"hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 11008},
    "1.5b": {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
             "intermediate_size": 8960},
}
VOCAB = 151680
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def shaped_model(shape: str, vit: dict = VIT):
    tokenizer = build_tiny_processor().tokenizer
    text = SHAPES[shape]
    config = Qwen2_5_VLConfig(
        vision_config={**vit, "out_hidden_size": text["hidden_size"]},
        text_config={**text, "vocab_size": VOCAB, "max_position_embeddings": 32768,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 640000.0,
                                         "mrope_section": mrope_section(text["hidden_size"] //
                                                                        text["num_attention_heads"])}},
        tie_word_embeddings=False, **token_ids(tokenizer))
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    return model


def packed_rows(model, rows: int, seq_len: int, images_per_row: int = 2, grid: int = 32, samples: int = 4,
                generator=None) -> dict:
    """Rows of `samples` samples each, the first `images_per_row` of them opening with a grid x grid image."""
    config = model.config
    merged = grid * grid // 4
    ids = torch.randint(VOCAB // 4, VOCAB // 2, (rows, seq_len), generator=generator)  # no special tokens
    types = torch.zeros(rows, seq_len, dtype=torch.long)
    segments = torch.zeros(rows, seq_len, dtype=torch.long)
    length = (seq_len - 16) // samples
    for b in range(rows):
        for k in range(samples):
            start = k * length
            segments[b, start : start + length] = k + 1
            if k < images_per_row:
                ids[b, start] = config.vision_start_token_id
                ids[b, start + 1 : start + 1 + merged] = config.image_token_id
                types[b, start + 1 : start + 1 + merged] = IMAGE
                ids[b, start + 1 + merged] = config.vision_end_token_id
    targets = ids.roll(-1, 1).masked_fill((types != 0) | (segments == 0), IGNORE)
    n_images = rows * images_per_row
    patch = 3 * 2 * 14 * 14
    return {"input_ids": ids, "targets": targets, "mm_token_type_ids": types, "segment_ids": segments,
            "pixel_values": torch.randn(n_images * grid * grid, patch, generator=generator),
            "image_grid_thw": torch.tensor([[1, grid, grid]] * n_images)}


def cuda(batch: dict) -> dict:
    return {k: v.cuda() for k, v in batch.items()}


def flops_per_token(model, trained_llm: bool) -> float:
    """Model FLOPs per text token: 6N trained, 4N frozen but backpropagated through (no weight gradients)."""
    n = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    return (6 if trained_llm else 4) * n


def timed_steps(net, batch, steps: int, optimizer=None, chunk: int = 4096) -> tuple[float, float]:
    """(seconds per step after one warm-up, peak GiB)."""
    net.logits_chunk = chunk
    learned = batch["targets"] != IGNORE
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = net(batch, learned, losses=True).sum() / max(int(learned.sum()), 1)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / steps, torch.cuda.max_memory_allocated() / 2**30


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), 989e12)


def part_attention(args) -> dict:
    model = shaped_model("1.5b", {**VIT, "depth": 4, "fullatt_block_indexes": [3]})
    plain = packed_rows(model, 2, 4096, images_per_row=1, generator=torch.Generator().manual_seed(0))
    # The same rows with samples 2 and 3 as branches of sample 1 (a shared prompt and two responses).
    shared = {**plain, "prefix_ids": torch.where((plain["segment_ids"] == 2) | (plain["segment_ids"] == 3), 1, 0)}
    results = {}
    with torch.no_grad():
        for name, batch in (("plain", cuda(plain)), ("shared_prompt", cuda(shared))):
            use_attention(model, "sdpa_dense")
            reference = PackedVLM(model)(batch).float()
            for backend in ("sdpa_varlen", "flash_varlen", "flex"):
                use_attention(model, backend)
                out = PackedVLM(model)(batch).float()
                results[f"{name}/{backend}"] = float((out - reference).abs().max() / reference.abs().max())
    use_attention(model, "auto")
    return {"max_relative_logit_error": results}


def pretrain_step(args, shape: str, trainable: list[str] | None) -> dict:
    """A pre-training step at `shape`, training `trainable` parts (None: everything): tokens/s, MFU, peak."""
    model = shaped_model(shape)
    use_attention(model, "auto")
    if trainable is not None:
        set_trainable(model, trainable)
    net = PackedVLM(model.train())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = cuda(packed_rows(model, args.rows, args.seq_len, generator=torch.Generator().manual_seed(0)))
    seconds, peak = timed_steps(net, batch, args.steps, optimizer)
    tokens = batch["input_ids"].numel()
    flops = flops_per_token(model, trainable is None) * tokens
    return {"tokens_per_s": tokens / seconds, "mfu": flops / seconds / peak_flops(), "peak_gib": peak,
            "seconds_per_step": seconds}


def part_s1(args) -> dict:
    return pretrain_step(args, "7b", ["projector"])


def part_s3(args) -> dict:
    return pretrain_step(args, "1.5b", None)


def part_rl(args) -> dict:
    """64 responses x 2K tokens as 16 rows of 4 responses of 2K (no prompt), forward + backward of the loss."""
    model = shaped_model("1.5b", {**VIT, "depth": 4, "fullatt_block_indexes": [3]})
    use_attention(model, "auto")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    net = PackedVLM(model.train())
    batch = cuda(packed_rows(model, 16, 4 * 2048 + 16, images_per_row=0, samples=4,
                             generator=torch.Generator().manual_seed(0)))
    peaks = {}
    for chunk in (4096, 0):
        try:
            seconds, peak = timed_steps(net, batch, 1, chunk=chunk)
            peaks[f"chunk_{chunk}"] = {"peak_gib": peak, "seconds": seconds}
        except torch.OutOfMemoryError as error:
            peaks[f"chunk_{chunk}"] = {"out_of_memory": str(error).splitlines()[0]}
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    return peaks


def part_sleep(args) -> dict:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"skipped": "vLLM is not installed"}
    import tempfile

    from mimovl.generate.engines import VLLMRollout
    from mimovl.model.build import build_tiny
    from mimovl.model.export import export_hf

    model, processor = build_tiny(seed=0)
    directory = export_hf(model, processor, tempfile.mkdtemp())
    engine = VLLMRollout(directory, dtype="bfloat16", sleep=True, gpu_memory_utilization=0.2)
    free_awake = torch.cuda.mem_get_info()[0]
    start = time.perf_counter()
    engine.release()
    slept = time.perf_counter() - start
    free_asleep = torch.cuda.mem_get_info()[0]
    start = time.perf_counter()
    engine.sync(model.state_dict().items())
    return {"sleep_s": slept, "wake_and_sync_s": time.perf_counter() - start,
            "freed_gib": (free_asleep - free_awake) / 2**30}


PARTS = {"attention": part_attention, "s1": part_s1, "s3": part_s3, "rl": part_rl, "sleep": part_sleep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_skipped=no CUDA device")
        return
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for name in args.parts:
        start = time.perf_counter()
        try:
            result = PARTS[name](args)
        except Exception as error:  # a part that fails says why; the others still run
            traceback.print_exc()
            result = {"failed": f"{type(error).__name__}: {error}"[:500]}
        result["wall_s"] = time.perf_counter() - start
        print(f"gpu_{name}={json.dumps(result)}", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
