"""benchmarks/compose_7b.py end to end at a tiny shape: sharded random components are written, composed with
model=mimo_vl_7b, exported and the export checked; the parameter count is the one the shape gives by hand, and
nothing is left behind. (The paper's shape runs the same script with no options: ~17 GB, minutes.)"""

import json
import subprocess
import sys
from pathlib import Path

from conftest import USER_ENV

ROOT = Path(__file__).resolve().parents[1]

SHAPE = {"vit-depth": 2, "vit-hidden": 32, "vit-heads": 2, "vit-intermediate": 64,
         "layers": 2, "hidden": 64, "heads": 4, "kv-heads": 2, "intermediate": 128, "vocab": 640}


def test_compose_7b_at_a_tiny_shape(tmp_path):
    flags = [f"--{k}={v}" for k, v in SHAPE.items()] + ["--shard-gb=0.0002", f"--dir={tmp_path}"]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compose_7b.py"), *flags], cwd=ROOT,
                            env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("compose_7b=")
    out = json.loads(line.removeprefix("compose_7b="))

    # By hand. ViT: patch embedding Conv3d(3 -> 32, 2x14x14, no bias); per block 2 RMSNorms, qkv and proj with
    # bias, a SwiGLU MLP (gate, up, down) with bias.
    vit = 3 * 2 * 14 * 14 * 32 + 2 * (2 * 32 + (32 * 96 + 96) + (32 * 32 + 32) + (2 * (32 * 64 + 64) + 64 * 32 + 32))
    projector = 32 + (128 * 128 + 128) + (128 * 64 + 64)  # RMSNorm(32), Linear(4*32 -> 4*32), Linear(128 -> 64)
    # LLM: head_dim 16, 2 KV heads -> k/v width 32; q, k, v with bias, o without; SwiGLU without bias; 2 norms.
    layer = (64 * 64 + 64) + 2 * (64 * 32 + 32) + 64 * 64 + 3 * 64 * 128 + 2 * 64
    llm = 640 * 64 + 2 * layer + 64 + 640 * 64  # embeddings, layers, final norm, untied lm_head
    assert vit + projector + llm == 239_840
    assert out["params"] == out["expected_params"] == out["export_params"] == 239_840
    assert out["equal"] is True and out["paper_shape"] is False
    assert len(out["checked"]) >= 9 and "model.visual.merger.mlp.0.weight" in out["checked"]
    assert out["shards"]["vit"] > 1 and out["shards"]["llm"] > 1  # sharded, with an index
    assert set(out["phases"]) == {"write", "compose", "export", "reload"}
    assert all(p["seconds"] >= 0 and p["peak_rss_gib"] > 0 for p in out["phases"].values())
    assert list(tmp_path.iterdir()) == []  # everything written was deleted
