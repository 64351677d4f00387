"""Two optimizer steps of the pre-training module on a fixed global batch of 2 rows per step, on 1 device or
sharded over N CPU processes with FSDP2 (Lightning's ModelParallelStrategy, gloo), optionally accumulating
gradients over micro-batches. Saves the full trained weights and step losses to OUT.

    python tests/fsdp_step.py OUT.pt 1      # reference: one process, both rows in one batch
    python tests/fsdp_step.py OUT.pt 2      # FSDP2: two processes, one row each
    python tests/fsdp_step.py OUT.pt 1 2    # one process accumulating two micro-batches of one row
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from mimovl.data.encode import encode  # noqa: E402
from mimovl.data.packing import collate_rows, pack_rows, with_window_tokens  # noqa: E402
from mimovl.data.synthetic import make_sample  # noqa: E402
from mimovl.model.build import build_tiny  # noqa: E402
from mimovl.stages.pretrain import PretrainModule  # noqa: E402
from mimovl.model.sharding import full_state_dict  # noqa: E402

SEQ_LEN, STEPS, ROWS_PER_STEP = 256, 2, 2


def global_rows(processor) -> list:
    types = ["caption", "grounding", "video", "reasoning", "interleaved", "qa", "ocr", "text"] * 2
    encoded = [encode({**make_sample(t, i), "skipped_before": 0}, processor) for i, t in enumerate(types)]
    rows = list(pack_rows(encoded, SEQ_LEN, buffer=len(encoded)))
    assert len(rows) >= STEPS * ROWS_PER_STEP, len(rows)
    return rows[: STEPS * ROWS_PER_STEP]


def main(out: str, devices: int, accumulate: int = 1) -> None:
    model, processor = build_tiny(seed=0)
    rows = global_rows(processor)
    pad = processor.tokenizer.pad_token_id
    strategy = "auto" if devices == 1 else ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_steps=STEPS, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, gradient_clip_val=1.0, accumulate_grad_batches=accumulate,
    )
    step_rows = [rows[s * ROWS_PER_STEP : (s + 1) * ROWS_PER_STEP] for s in range(STEPS)]
    per_batch = ROWS_PER_STEP // (devices * accumulate)
    mine = [r[trainer.global_rank * per_batch * accumulate :][: per_batch * accumulate] for r in step_rows]
    batches = [
        collate_rows(r[m * per_batch : (m + 1) * per_batch], SEQ_LEN, pad) for r in mine for m in range(accumulate)
    ]
    module = PretrainModule(model, trainable=["vit", "projector", "llm"],
                            lr={"vit": 1e-3, "projector": 1e-3, "llm": 1e-3}, warmup_ratio=0.0)
    trainer.fit(module, train_dataloaders=DataLoader(list(with_window_tokens(batches, accumulate)), batch_size=None))
    state = full_state_dict(module.model)
    if trainer.is_global_zero:
        torch.save({"state": state, "losses": module.history["loss"]}, out)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
