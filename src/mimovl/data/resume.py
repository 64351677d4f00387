"""A data stream's position in a checkpoint: one per rank, saved with the settings it holds for, and this rank's
found again on resume. The cross-entropy, preference and prompt DataModules keep theirs this way.

    saved = save_position(config, position)              # in a DataModule's state_dict (a collective over ranks)
    position = find_position(saved, config, "skipping")  # on resume: this rank's position, or None (logged)

`position` is what the stream's `state_dict()` gave on this rank (a StatefulDataLoader's: one state per worker; or
a MixedStream's); `config` is `stream_config(...)`, everything the position depends on. A saved position that does
not apply is not used, and the caller falls back to reading the stream again and skipping what was consumed
(the stream this run's settings give, less what was trained on: how every resume worked before positions were
saved). Two cases, each with one log line:

- a checkpoint written before positions were saved (no position in it): info;
- data settings that differ from the checkpoint's (another mix, other shards, seed, buffer sizes, sequence
  length, worker count or world size): a warning naming what changed. Refusing would leave no way to change
  the data of a running programme short of starting over; the skip keeps today's meaning of such a resume.
"""

import hashlib
import logging

import torch.distributed as dist

log = logging.getLogger(__name__)


def stream_config(stream, **settings) -> dict:
    """What a saved position of `stream` (a `mimovl.data.stream.MixedStream`) depends on: per source its weight,
    shard count and a digest of its shard list, the stream's seed, shuffle buffer and frame sampling, the world
    size, and `settings` (what the caller adds on top: row length, pack buffer, worker count, ...)."""
    config = {f"sources.{name}": {"weight": weight, "shards": len(urls),
                                  "digest": hashlib.sha256("\n".join(urls).encode()).hexdigest()[:16]}
              for name, (urls, weight) in stream.sources.items()}
    config.update(seed=stream.seed, shuffle_buffer=stream.shuffle_buffer, resample=stream.resample,
                  video_fps=stream.video_fps, max_frames=stream.max_frames, world_size=_world()[1], **settings)
    return config


def save_position(config: dict, position: dict | None) -> dict:
    """The checkpoint entry: `config` and every rank's position, gathered on rank 0, which writes the checkpoint's
    non-tensor part (all ranks must call this together; the others list their own position only)."""
    rank, world = _world()
    if world == 1:
        return {"config": config, "ranks": [position]}
    ranks = [None] * world
    dist.gather_object(position, ranks if rank == 0 else None, dst=0)
    ranks[rank] = position
    return {"config": config, "ranks": ranks}


def find_position(saved: dict | None, config: dict, fallback: str) -> dict | None:
    """This rank's saved position, or None with a log line ending in `fallback` (what the caller does instead)."""
    if not saved:
        log.info("the checkpoint holds no data stream position (it was written before they were saved): %s",
                 fallback)
        return None
    before = saved["config"]
    changed = sorted(key for key in config.keys() | before.keys() if config.get(key) != before.get(key))
    if changed:
        log.warning("the data settings differ from the checkpoint's (%s), so its saved stream position does not "
                    "apply: %s", ", ".join(changed), fallback)
        return None
    position = saved["ranks"][_world()[0]]
    if position is None:
        log.info("the checkpoint holds no data stream position for this rank: %s", fallback)
    return position


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
