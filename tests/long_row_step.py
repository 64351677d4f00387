"""One forward and backward of the tiny model on one packed row of SEQ_LEN tokens (several documents and the
row's padding), printing the run's added peak memory as JSON. A child process per measurement, so each peak is
its own (ru_maxrss never goes down).

    python tests/long_row_step.py sdpa_varlen 32768 [LAYERS]
"""

import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from mimovl.model.attention import use_attention  # noqa: E402
from mimovl.model.build import build_tiny  # noqa: E402
from mimovl.model.logits import token_losses  # noqa: E402
from mimovl.model.packed import PackedVLM  # noqa: E402

DOCUMENTS = (4096, 8192, 2048, 6000, 3000, 9000)  # tokens per sample, cut at the row's end; the rest is padding


def main(backend: str, length: int, layers: int) -> None:
    model, processor = build_tiny(seed=0, num_layers=layers)
    model.train()
    use_attention(model, backend)
    ids = torch.randint(10, len(processor.tokenizer) - 10, (1, length), generator=torch.Generator().manual_seed(0))
    segments = torch.zeros(1, length, dtype=torch.long)
    start = 0
    for k, n in enumerate(DOCUMENTS, start=1):
        end = min(length - 100, start + n)
        segments[0, start:end] = k
        start = end
    batch = {"input_ids": ids, "targets": ids.roll(-1, 1), "mm_token_type_ids": torch.zeros_like(ids),
             "segment_ids": segments}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = token_losses(PackedVLM(model)(batch), batch["targets"]).sum()
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    print(json.dumps({"backend": backend, "length": length, "added_peak_gb": (peak - before) / 1e6,
                      "loss": float(loss.detach()), "finite": bool(torch.isfinite(loss)) and grads_finite}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2)
