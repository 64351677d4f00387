"""What every curation step shares: reading shards, the resume rule, writing shards and the report.

    report = run_step(Dedup(max_distance=10), "data/cap-*.tar", "cur/dedup/cap-%06d.tar")

A step sees `Item`s (one per sample: its tar members as bytes, its parsed KEY.json, the decoded schema
sample) in shard order and returns, per item, the record to write or None after `report.remove(...)`.
Kept samples are written with their original member bytes (an image a step does not change is not
re-encoded); a step that changes images re-encodes only those, in their stored format (Item.updated).

Every step drops samples that fail to decode (reason "corrupt"), so any step's output reads cleanly.
Samples whose type is not in the step's `types` pass through unchanged (counted as "passed_through").

Resume policy (one rule, per output directory):
  * report.json, written last and atomically, is the completion marker. It records the step, its params,
    `maxcount`, `types` and a fingerprint of every input file (path, size, mtime_ns; eval shards and concept
    files included).
  * A run whose report.json says done with the same signature, and whose output shards all exist with
    their recorded sizes, does nothing and returns that report (`skipped: True`; nothing is rewritten).
  * Anything else (no report, an interrupted run, other arguments or changed inputs, --force) restarts the
    step from the start: the old report and every file in the output directory that the output pattern
    could have named are deleted first, then the step runs over all inputs. There is no mid-step
    checkpoint: dedup's index and balance's counts span all shards, so a step is the unit of resumption;
    chain steps into separate directories to keep finished ones.
Output is deterministic: the same inputs and arguments give byte-identical shards (tar mtime 0, member
order sorted, every random choice seeded by (seed, sample key)).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from mimovl.data.shards import encode_image, write_records
from mimovl.data.stream import decode_sample, expand_shards
from mimovl.errors import UsageError

log = logging.getLogger(__name__)

REPORT = "report.json"


@dataclass
class Item:
    """One sample as read: `members` are its tar members by name ("json", "img0.png", ...)."""

    key: str
    shard: str
    members: dict[str, bytes]
    header: dict  # the parsed KEY.json: type, messages, meta, media
    sample: dict | None  # the decoded schema sample (PIL images); None when read with decode=False

    @property
    def type(self) -> str:
        return self.header["type"]

    def record(self) -> dict:
        """The sample unchanged, as a record for the shard writer."""
        return {"__key__": self.key, **self.members}

    def updated(self, messages=None, meta=None, images: dict[int, Image.Image] | None = None) -> dict:
        """A record with new messages / meta / images (by index), each image re-encoded in its stored format."""
        header = dict(self.header)
        if messages is not None:
            header["messages"] = messages
        if meta is not None:
            header["meta"] = meta
        members = dict(self.members)
        names = [m["name"] for m in header["media"] if m["kind"] == "image"]
        for i, img in (images or {}).items():
            members[names[i]] = encode_image(img, "jpg" if names[i].endswith(".jpg") else "png")
        members["json"] = json.dumps(header, ensure_ascii=False).encode("utf-8")
        return {"__key__": self.key, **members}


class Report:
    """Counts, removals and step stats of one run (report.json holds them beside the resume fields)."""

    def __init__(self) -> None:
        self.n_in = self.n_out = self.modified = self.passed_through = self.read_errors = 0
        self.removed: list[dict] = []
        self.stats: dict = {}

    def remove(self, item: Item | None, reason: str, key: str | None = None, shard: str | None = None,
               **details) -> None:
        """Record that a sample is dropped and why; details (JSON values) go into its entry."""
        self.removed.append({"key": item.key if item else key, "shard": item.shard if item else shard,
                             "reason": reason, **details})

    def counts(self) -> dict:
        return {
            "in": self.n_in, "out": self.n_out, "removed": len(self.removed),
            "removed_by_reason": dict(sorted(Counter(r["reason"] for r in self.removed).items())),
            "modified": self.modified, "passed_through": self.passed_through, "read_errors": self.read_errors,
        }


class Step:
    """Base of the steps. A step names itself, says which params decide its output, and processes items.

    `types`: the sample types it works on (None: all); others pass through. `batch_size`: how many of those
    `process` gets at once (recaption batches model calls; the rest take one).
    """

    name = "step"
    default_types: tuple[str, ...] | None = None
    batch_size = 1
    torch_threads: int | None = None  # torch's intra-op threads while the step runs (None: leave as is)

    def __init__(self, types: Iterable[str] | None = None):
        chosen = types if types is not None else self.default_types
        self.types = None if chosen is None else tuple(sorted(chosen))

    def params(self) -> dict:
        """JSON values that, with the inputs, determine the output (the resume signature)."""
        return {}

    def input_files(self) -> list[str]:
        """Files besides the input shards whose change must rerun the step (eval shards, concept lists)."""
        return []

    def prepare(self, read: Callable[..., Iterator[Item]]) -> None:
        """Runs before the main pass; `read(decode=False)` iterates the step's items (a first pass)."""

    def process(self, items: list[Item], report: Report) -> list[dict | None]:
        return [self.process_one(item, report) for item in items]

    def process_one(self, item: Item, report: Report) -> dict | None:
        raise NotImplementedError

    def finish(self) -> dict:
        """Step statistics for the report, after the main pass."""
        return {}


def fingerprint(paths: Iterable[str]) -> list[dict]:
    """Path, size and modification time of each file: what the resume rule compares."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def expand_inputs(inputs: str | list[str], what: str = "--input") -> list[str]:
    """Shard paths from brace patterns, globs and lists (as the training config reads them)."""
    return expand_shards(what, [str(u) for u in ([inputs] if isinstance(inputs, (str, Path)) else inputs)])


def read_items(shards: list[str], report: Report | None = None, decode: bool = True) -> Iterator[Item]:
    """Items of `shards` in order. Undecodable samples are dropped into `report` as "corrupt" (counted as
    read); unreadable shards count as read errors. With decode=False only KEY.json is parsed."""
    report = report if report is not None else Report()

    def on_read_error(exn: Exception) -> bool:
        report.read_errors += 1
        log.warning("shard read error: %s: %s", type(exn).__name__, exn)
        return True  # webdataset: continue with the next shard

    pipeline = wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples(handler=on_read_error))
    for raw in pipeline:
        key, shard = raw["__key__"], raw["__url__"]
        members = {k: v for k, v in raw.items() if not k.startswith("__")}
        try:
            header = json.loads(members["json"])
            if not isinstance(header, dict) or "type" not in header:
                raise ValueError("KEY.json holds no sample type")
            sample = decode_sample(raw, "curate", video_fps=None, max_frames=None) if decode else None
        except Exception as exn:
            report.n_in += 1
            report.remove(None, "corrupt", key=key, shard=shard, error=f"{type(exn).__name__}: {exn}")
            continue
        yield Item(key, shard, members, header, sample)


def run_step(step: Step, inputs: str | list[str], out: str, maxcount: int = 1000, force: bool = False,
             progress: bool = False) -> dict:
    """Run `step` over the input shards into shards named `out % i`; return the report (see module doc)."""
    if not re.search(r"%0?\d*d", os.path.basename(out)):
        raise UsageError(f"--out needs a shard number placeholder such as %06d in its file name: {out!r}")
    shards = expand_inputs(inputs)
    out_dir = Path(out).parent
    report_path = out_dir / REPORT
    owned = _owned_by_pattern(out)
    clash = [s for s in shards if Path(s).resolve().parent == out_dir.resolve() and owned(Path(s).name)]
    if clash:
        raise UsageError(f"--out {out!r} names the input shards {clash[:3]}: write to another directory")
    signature = {
        "step": step.name, "params": step.params(), "types": step.types, "maxcount": maxcount,
        "inputs": fingerprint(shards), "extra_inputs": fingerprint(step.input_files()),
    }
    if not force:
        done = _finished_report(report_path, signature)
        if done is not None:
            log.info("%s: %s already done with these arguments; nothing to do", step.name, report_path)
            return {**done, "skipped": True}

    # restart cleanly: nothing of an earlier (other, or interrupted) run survives
    if report_path.exists():
        report_path.unlink()
    if out_dir.exists():
        for path in out_dir.iterdir():
            if path.is_file() and owned(path.name):
                path.unlink()

    start = time.perf_counter()
    report = Report()
    selected = (lambda item: True) if step.types is None else (lambda item: item.type in step.types)

    def read_selected(decode: bool = False) -> Iterator[Item]:
        return (item for item in read_items(shards, Report(), decode) if selected(item))

    with _torch_threads(step.torch_threads):
        step.prepare(read_selected)
        items = tqdm(read_items(shards, report), desc=step.name, unit="sample", disable=not progress)
        paths = write_records(_records(step, items, report, selected), out, maxcount, 1e9)
    if report.n_out == 0:  # an empty tar only stalls a reader: leave no shard behind
        for p in paths:
            os.remove(p)
        paths = []
    counts = report.counts()
    assert counts["in"] == counts["out"] + counts["removed"], counts
    result = {
        "done": True, **signature,
        "outputs": [{"path": p, "size": os.path.getsize(p)} for p in paths],
        "counts": counts, "stats": {**step.finish(), **report.stats},
        "removed": report.removed, "seconds": round(time.perf_counter() - start, 3),
    }
    tmp = report_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    os.replace(tmp, report_path)
    return {**result, "skipped": False}


def _records(step: Step, items: Iterable[Item], report: Report, selected) -> Iterator[dict]:
    """Feed the selected items to the step in batches, keeping the input order in the output."""
    window: list[Item] = []

    def flush() -> Iterator[dict]:
        chosen = [item for item in window if selected(item)]
        results = iter(step.process(chosen, report) if chosen else [])
        for item in window:
            record = next(results) if selected(item) else item.record()
            if not selected(item):
                report.passed_through += 1
            if record is not None:
                report.n_out += 1
                yield record
        window.clear()

    pending = 0
    for item in items:
        report.n_in += 1
        window.append(item)
        pending += selected(item)
        if pending >= step.batch_size:
            yield from flush()
            pending = 0
    yield from flush()


@contextmanager
def _torch_threads(n: int | None):
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _owned_by_pattern(out: str) -> Callable[[str], bool]:
    """Whether a file name is one the shard pattern (its %d placeholder) produces."""
    name = os.path.basename(out)
    parts = re.split(r"%0?\d*d", name, maxsplit=1)
    regex = re.compile(re.escape(parts[0]) + r"\d+" + re.escape(parts[1]))
    return lambda file_name: regex.fullmatch(file_name) is not None


def _finished_report(path: Path, signature: dict) -> dict | None:
    """The report at `path` if it marks a finished run with this signature and intact outputs."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not report.get("done") or any(report.get(k) != json.loads(json.dumps(v)) for k, v in signature.items()):
        return None
    for out in report.get("outputs", []):
        if not os.path.exists(out["path"]) or os.path.getsize(out["path"]) != out["size"]:
            return None
    return report
