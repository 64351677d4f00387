"""A 7B-shaped proof on one CPU machine: random component checkpoints at the paper's shapes, composed with
`model=mimo_vl_7b`, exported, and the export checked against the composed model.

    python benchmarks/compose_7b.py                      # the paper's shapes: 31 GiB written under /tmp, then deleted
    python benchmarks/compose_7b.py --dir /scratch --keep
    python benchmarks/compose_7b.py --layers 2 --vit-depth 2 --hidden 256 --heads 4 --kv-heads 2 \
        --intermediate 512 --vocab 1024 --vit-hidden 64 --vit-heads 2 --vit-intermediate 128   # seconds

Phases, each timed and its peak RSS measured on its own (VmHWM, reset at the start of each phase through
/proc/self/clear_refs; where that is refused the peak is the process's since start and the line says so):
- write: a Qwen2.5-VL-format ViT directory (Qwen2.5-VL-7B-Instruct's config.json, its `visual.*` tensors: the
  32 x 1280 Qwen2.5-ViT and its merger; no LLM tensors, which compose never reads) and a MiMo-7B-Base-shaped
  Qwen2 causal-LM directory (its config.json, MTP layer included, which compose drops), both bf16 sharded
  safetensors with model.safetensors.index.json, random values generated one tensor at a time, one shard in
  memory at a time. The tokenizer is the tiny model's (fewer tokens than the LLM's vocabulary, which compose
  allows); the image and video processor configs are the tiny processor's. Nothing is downloaded.
- compose: `python src/run.py model=mimo_vl_7b model.vit_path=... model.llm_path=... model.dtype=bfloat16`'s
  model construction (`mimovl.model.start.build_model` over the Hydra config), which checks the paper's
  shapes (`model.expect_shapes`, off when a shape option changes them).
- export: `mimovl.model.export.export_hf` into `<dir>/hf`.
- reload: the export's config.json and a few tensors (safetensors `safe_open`, never the whole model) against
  the composed model; the composed model's ViT and LLM tensors against the written components; every exported
  tensor's shape summed against the parameter count.
The last line is machine-readable: `compose_7b={json}` with params, expected_params, export_params, equal
(every check passed), checked (the tensors compared), shards (safetensors files per directory) and per-phase
seconds and peak RSS in GiB.
Everything written is deleted at the end, also on an error, unless --keep (a process killed by the kernel's OOM
killer cannot clean up: remove the `compose_7b-*` directory it names). At the paper's shapes (8,301,791,232
parameters, 15.5 GiB in bf16; 15.9 GiB of components, then a 15.5 GiB export) on 2 CPU cores: about 4.5 minutes,
peak RSS 4.7 GiB writing, 16.2 GiB composing (the model and the interpreter), 17.3 GiB reloading (the model and one
exported embedding matrix); it needs about 17.5 GiB of free memory and 32 GiB of free disk.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from hydra import compose as hydra_compose  # noqa: E402
from hydra import initialize_config_dir  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (  # noqa: E402
    Qwen2_5_VisionTransformerPretrainedModel,
)

from mimovl.model.compose import MIMO_VL_7B  # noqa: E402
from mimovl.model.export import export_hf  # noqa: E402
from mimovl.model.processor import build_tiny_processor  # noqa: E402
from mimovl.model.start import build_model  # noqa: E402

GIB = 1024**3
DTYPE = torch.bfloat16
VISION, LLM = MIMO_VL_7B["vision"], MIMO_VL_7B["llm"]
# Qwen2.5-VL-7B-Instruct's config.json (its text part is never read by compose) and MiMo-7B-Base's.
QWEN25_VL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "hidden_size": 3584,
    "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "vocab_size": 152064, "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "torch_dtype": "bfloat16", "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
        "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2,
    },
}
MIMO_7B_BASE = {
    "architectures": ["MiMoForCausalLM"], "model_type": "mimo", "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 11008, "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 36,
    "num_key_value_heads": 8, "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-05, "rope_theta": 640000,
    "tie_word_embeddings": False, "vocab_size": 151680, "use_sliding_window": False, "torch_dtype": "bfloat16",
}
# Shape options: (flag, config dict, field, paper value).
SHAPE = [
    ("vit_depth", "vision", "depth", VISION["depth"]), ("vit_hidden", "vision", "hidden_size", VISION["hidden_size"]),
    ("vit_heads", "vision", "num_heads", VISION["num_heads"]),
    ("vit_intermediate", "vision", "intermediate_size", VISION["intermediate_size"]),
    ("layers", "llm", "num_hidden_layers", LLM["num_hidden_layers"]),
    ("hidden", "llm", "hidden_size", LLM["hidden_size"]),
    ("heads", "llm", "num_attention_heads", LLM["num_attention_heads"]),
    ("kv_heads", "llm", "num_key_value_heads", LLM["num_key_value_heads"]),
    ("intermediate", "llm", "intermediate_size", LLM["intermediate_size"]),
    ("vocab", "llm", "vocab_size", LLM["vocab_size"]),
]


def configs(args) -> tuple[dict, dict]:
    """(ViT directory's config.json, LLM directory's config.json) at the shape the options ask for."""
    vit, llm = json.loads(json.dumps(QWEN25_VL_7B)), dict(MIMO_7B_BASE)
    for flag, part, field, _ in SHAPE:
        (vit["vision_config"] if part == "vision" else llm)[field] = getattr(args, flag)
    depth = vit["vision_config"]["depth"]
    vit["vision_config"]["fullatt_block_indexes"] = list(range(7, depth, 8)) or [depth - 1]  # 7, 15, 23, 31 at 32
    return vit, llm


def expected_params(vision: dict, llm: dict) -> int:
    """The composed model's parameter count, by hand from the shapes: ViT (patch embedding, blocks), projector
    (RMSNorm, Linear(4h -> 4h), Linear(4h -> LLM hidden)), LLM (embeddings, layers, norm, untied lm_head)."""
    h, i = vision["hidden_size"], vision["intermediate_size"]
    patch = 3 * vision["temporal_patch_size"] * vision["patch_size"] ** 2 * h
    block = 2 * h + (3 * h * h + 3 * h) + (h * h + h) + (3 * h * i + 2 * i + h)
    d, ff, vocab = llm["hidden_size"], llm["intermediate_size"], llm["vocab_size"]
    kv = d // llm["num_attention_heads"] * llm["num_key_value_heads"]
    projector = h + (16 * h * h + 4 * h) + (4 * h * d + d)
    layer = (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * ff + 2 * d
    return patch + vision["depth"] * block + projector + 2 * vocab * d + llm["num_hidden_layers"] * layer + d


def component_tensors(vit: dict, llm: dict) -> tuple[dict, dict]:
    """{checkpoint name: shape} of the ViT directory (`visual.*`) and of the LLM directory (`model.*`,
    `lm_head.weight`, and MiMo's MTP layer `model.mtp_layers.0.*`), read off meta-device modules."""
    with torch.device("meta"):
        vision_config = Qwen2_5_VLConfig(vision_config=vit["vision_config"]).vision_config
        visual = Qwen2_5_VisionTransformerPretrainedModel(vision_config)
        qwen2 = {k: v for k, v in llm.items() if k not in ("architectures", "model_type")}  # MiMo's is Qwen2's
        causal = Qwen2ForCausalLM(Qwen2Config(**qwen2))
    vit_shapes = {f"visual.{k}": tuple(v.shape) for k, v in visual.state_dict().items()}
    llm_shapes = {k: tuple(v.shape) for k, v in causal.state_dict().items()}
    H = llm["hidden_size"]
    mtp = {k.replace("model.layers.0.", "model.mtp_layers.0."): s for k, s in llm_shapes.items()
           if k.startswith("model.layers.0.")}
    mtp |= {f"model.mtp_layers.0.{n}.weight": (H,) for n in ("token_layernorm", "hidden_layernorm", "final_layernorm")}
    mtp["model.mtp_layers.0.input_proj.weight"] = (H, 2 * H)
    return vit_shapes, llm_shapes | mtp


def write_checkpoint(directory: Path, shapes: dict, config: dict, shard_bytes: int, seed: int) -> int:
    """Random bf16 tensors (normal, std 0.02) as safetensors shards of at most `shard_bytes` (a larger tensor
    gets a shard of its own) with model.safetensors.index.json and config.json; one shard in memory at a time.
    Returns the bytes written."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    shards, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = DTYPE.itemsize * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    generator, weight_map, total = torch.Generator().manual_seed(seed), {}, 0
    for n, names in enumerate(shards, 1):
        file = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: torch.empty(shapes[k], dtype=DTYPE).normal_(0.0, 0.02, generator=generator) for k in names}
        save_file(tensors, directory / file, metadata={"format": "pt"})
        total += sum(t.nbytes for t in tensors.values())
        weight_map |= dict.fromkeys(names, file)
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def checkpoint_name(name: str) -> str:
    """A composed model's in-memory name -> its name in an exported (and a component) checkpoint."""
    if name.startswith("model.visual."):
        return name.removeprefix("model.")
    return name.replace("model.language_model.", "model.", 1)


def read_tensor(directory: Path, key: str) -> torch.Tensor:
    """One tensor of a checkpoint directory (sharded with an index, or a single model.safetensors)."""
    index = directory / "model.safetensors.index.json"
    file = json.loads(index.read_text())["weight_map"][key] if index.is_file() else "model.safetensors"
    with safe_open(str(directory / file), framework="pt") as f:
        return f.get_tensor(key)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a, b)


def exported_params(directory: Path) -> int:
    """The number of values in every tensor of a checkpoint directory, read from the headers only."""
    index = directory / "model.safetensors.index.json"
    files = set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else {"model.safetensors"}
    count = 0
    for file in files:
        with safe_open(str(directory / file), framework="pt") as f:
            count += sum(torch.Size(f.get_slice(k).get_shape()).numel() for k in f.keys())  # noqa: SIM118
    return count


def check_export(model, out: Path, vit_dir: Path, llm_dir: Path) -> tuple[bool, list[str]]:
    """(every check passed, the tensors compared): the export's config and tensors equal the composed model's;
    the composed ViT and LLM tensors equal the components'; the projector is not the ViT directory's merger."""
    volatile = ("architectures", "dtype", "transformers_version")
    reloaded = Qwen2_5_VLConfig.from_pretrained(str(out)).to_dict()
    live = model.config.to_dict()
    config_ok = reloaded.get("dtype") == "bfloat16" and all(
        reloaded.get(k) == live.get(k) for k in set(reloaded) | set(live) if k not in volatile)
    last_block, last_layer = model.config.vision_config.depth - 1, model.config.text_config.num_hidden_layers - 1
    names = ["model.visual.patch_embed.proj.weight", f"model.visual.blocks.{last_block}.attn.qkv.weight",
             "model.visual.merger.mlp.0.weight", "model.visual.merger.mlp.2.weight",
             "model.language_model.embed_tokens.weight", "model.language_model.layers.0.self_attn.k_proj.bias",
             f"model.language_model.layers.{last_layer}.mlp.down_proj.weight", "model.language_model.norm.weight",
             "lm_head.weight"]
    params = dict(model.named_parameters())
    ok = config_ok
    for name in names:
        live_tensor, key = params[name].detach(), checkpoint_name(name)
        # One file tensor at a time: each is a view of its file's memory map, in RSS while it lives.
        ok &= same(read_tensor(out, key), live_tensor)
        source_dir = vit_dir if ".visual." in name else llm_dir
        ok &= same(read_tensor(source_dir, key), live_tensor) != (".merger." in name)  # a fresh projector
    return bool(ok), names


def rss_gib(field: str) -> float:
    """VmRSS or VmHWM of this process, in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GIB
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextmanager
def phase(name: str, results: dict):
    """Time a phase and measure its own peak RSS; print one line and add it to `results`."""
    own = reset_peak()
    start, clock = rss_gib("VmRSS"), time.perf_counter()
    yield
    seconds, peak, end = time.perf_counter() - clock, rss_gib("VmHWM"), rss_gib("VmRSS")
    results[name] = {"seconds": round(seconds, 1), "peak_rss_gib": round(peak, 2)}
    scope = "" if own else " (peak since process start: VmHWM could not be reset)"
    print(f"{name:8s} {seconds:7.1f} s   peak RSS {peak:6.2f} GiB{scope}   RSS {start:6.2f} -> {end:6.2f} GiB "
          f"(+{peak - start:.2f} GiB at the peak)", flush=True)


def compose_model(vit_dir: Path, llm_dir: Path, paper_shape: bool):
    """(model, processor) as a stage builds them from `model=mimo_vl_7b`, in bf16."""
    overrides = ["model=mimo_vl_7b", f"model.vit_path={vit_dir}", f"model.llm_path={llm_dir}", "model.dtype=bfloat16",
                 f"model.expect_shapes={str(paper_shape).lower()}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return build_model(cfg, None)


def run(args, root: Path) -> dict:
    vit, llm = configs(args)
    paper_shape = all(getattr(args, flag) == paper for flag, _, _, paper in SHAPE)
    vit_dir, llm_dir, out = root / "vit", root / "llm", root / "hf"
    results = {}
    with phase("write", results):
        vit_shapes, llm_shapes = component_tensors(vit, llm)
        need = 2 * DTYPE.itemsize * sum(torch.Size(s).numel() for s in (vit_shapes | llm_shapes).values())
        if shutil.disk_usage(root).free < need:  # the components, then an export of about their size
            raise SystemExit(f"{root}: {shutil.disk_usage(root).free / GIB:.1f} GiB free, {need / GIB:.1f} needed")
        shard = int(args.shard_gb * GIB)
        written = write_checkpoint(vit_dir, vit_shapes, vit, shard, seed=1)
        written += write_checkpoint(llm_dir, llm_shapes, llm, shard, seed=2)
        processor = build_tiny_processor()
        processor.save_pretrained(vit_dir)
        processor.tokenizer.save_pretrained(llm_dir)
        del processor
    print(f"wrote {written / GIB:.2f} GiB under {root}", flush=True)
    with phase("compose", results):
        model, processor = compose_model(vit_dir, llm_dir, paper_shape)
    params = sum(p.numel() for p in model.parameters())
    with phase("export", results):
        export_hf(model, processor, out)
    with phase("reload", results):
        equal, checked = check_export(model, out, vit_dir, llm_dir)
        export_count = exported_params(out)
    expected = expected_params(model.config.vision_config.to_dict(), llm)
    bf16 = sum(p.nbytes for p in model.parameters()) / GIB
    print(f"parameters {params:,} (by hand from the shapes: {expected:,}; in the export: {export_count:,}); "
          f"bf16 weights {bf16:.2f} GiB; export {'equals' if equal else 'DIFFERS FROM'} the composed model "
          f"({len(checked)} tensors and the config)", flush=True)
    return {"params": params, "expected_params": expected, "export_params": export_count, "bf16_gib": round(bf16, 2),
            "equal": equal and params == expected == export_count, "checked": checked, "paper_shape": paper_shape,
            "shards": {d.name: len(list(d.glob("*.safetensors"))) for d in (vit_dir, llm_dir, out)},
            "phases": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help="where the temporary directory goes (default: the system's, /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep what was written (and say where)")
    parser.add_argument("--shard-gb", type=float, default=4.0, help="safetensors shard size of the components, GiB")
    for flag, part, field, paper in SHAPE:
        parser.add_argument("--" + flag.replace("_", "-"), type=int, default=paper,
                            help=f"{part} {field} (paper: {paper})")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="compose_7b-", dir=args.dir))
    try:
        result = run(args, root)
    finally:
        if args.keep:
            print(f"kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("compose_7b=" + json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if result["equal"] else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
