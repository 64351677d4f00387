"""Lightning's torch checkpoint plugin, writing each checkpoint atomically (mimovl.outputs.atomic_file)."""

from typing import Any

import torch
from fsspec.utils import get_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mimovl.outputs import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint plugin, saving into a temp file beside the checkpoint (fsync, rename), so
    `last.ckpt` is always the previous complete checkpoint or the new complete one, whatever $TMPDIR is.
    Remote paths (s3://...) keep Lightning's own save. Pass it as `Trainer(plugins=[AtomicCheckpointIO()])`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or get_protocol(str(path)) != "file":
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_file(path) as f:
            torch.save(checkpoint, f)
