"""Synthetic shards on disk: write_synthetic writes a split, ensure_synthetic reuses it when its DONE
marker records the same arguments.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import uuid
from pathlib import Path

from mimovl.data.schema import SAMPLE_TYPES
from mimovl.data.shards import write_shards
from mimovl.data.synthetic.tasks import make_sample

DONE = "DONE.json"


def write_synthetic(
    root,
    n_per_type: int = 256,
    seed: int = 0,
    image_size=(112, 112),
    split: str = "train",
    shard_size: int = 128,
    types=SAMPLE_TYPES,
) -> dict[str, list[str]]:
    """Write `n_per_type` samples of each type to root/{split}/{type}/{type}-%06d.tar, then the DONE marker.

    Returns {type: [shard paths]}. Image sizes: (width, height), best multiples of 28, at least 84x84.
    """
    out = Path(root) / split
    shards = {}
    for t in types:
        samples = (make_sample(t, i, seed, split, image_size) for i in range(n_per_type))
        shards[t] = write_shards(samples, str(out / t / f"{t}-%06d.tar"), maxcount=shard_size, progress=False)
    params = _params(n_per_type, seed, image_size, shard_size, types)
    shards_rel = {t: [os.path.relpath(p, out) for p in ps] for t, ps in shards.items()}
    (out / DONE).write_text(json.dumps({"params": params, "shards": shards_rel}, indent=1))
    return shards


def ensure_synthetic(root, split: str = "train", **settings) -> dict[str, list[str]]:
    """`write_synthetic(root, split=split, **settings)` unless root/{split} already holds a complete set written
    with the same settings.

    Safe to call from several processes at once: each writes into a private directory and renames it into
    place; the first rename wins.
    """
    chosen = inspect.signature(write_synthetic).bind(root, split=split, **settings)
    chosen.apply_defaults()
    params = _params(*(chosen.arguments[k] for k in ("n_per_type", "seed", "image_size", "shard_size", "types")))
    out = Path(root) / split
    found = _read_done(out)
    if found is not None and found["params"] == params:
        return {t: [str(out / p) for p in ps] for t, ps in found["shards"].items()}
    tmp = Path(root) / f".tmp-{uuid.uuid4().hex}"
    write_synthetic(tmp, split=split, **settings)
    if _read_done(out) != _read_done(tmp / split):  # else another process finished the same set meanwhile
        shutil.rmtree(out, ignore_errors=True)  # interrupted, or written with other arguments
        try:
            os.rename(tmp / split, out)
        except OSError:
            pass  # another process renamed its identical set into place first
    shutil.rmtree(tmp, ignore_errors=True)
    found = _read_done(out)
    if found is None or found["params"] != params:
        raise RuntimeError(
            f"{out}: another process wrote synthetic data with other arguments at the same time"
        )
    return {t: [str(out / p) for p in ps] for t, ps in found["shards"].items()}


def _params(n_per_type, seed, image_size, shard_size, types) -> dict:
    """The arguments a DONE marker records (in JSON form, to compare with what it read back)."""
    return {
        "n_per_type": n_per_type,
        "seed": seed,
        "image_size": list(image_size),
        "shard_size": shard_size,
        "types": list(types),
    }


def _read_done(out: Path) -> dict | None:
    try:
        return json.loads((out / DONE).read_text())
    except (OSError, ValueError):
        return None
