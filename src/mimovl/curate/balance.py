"""balance: MetaCLIP-style concept balancing of captions.

    python -m mimovl.curate balance --input 'data/cap-*.tar' --out 'cur/balance/cap-%06d.tar' \
        [--concepts concepts.txt] [--t 20000] [--seed 0] [--min-count 2] [--keep-unmatched]

MetaCLIP's algorithm (Xu et al., 2023, "Demystifying CLIP Data"; facebookresearch/MetaCLIP,
metaclip1/balancing.py), over the supervised text of each sample of --types (default: caption):
  1. substring-match the text against a concept list: an entry matches where " entry " occurs in the text
     after MetaCLIP's spacing (, . ; : ? ! ` split off, tabs and newlines made spaces);
  2. count, over all the input, the samples matching each entry (a first pass);
  3. keep a sample when, for any of its matched entries, a uniform draw falls below t / max(count, t): an
     entry matched at most t times keeps every sample (the tail), one matched more keeps about t of them (the
     head). A sample that matches nothing is dropped, as in MetaCLIP (reason "no_concept"), unless
     --keep-unmatched.
Matching here looks the text's token n-grams (n up to the longest entry) up in a set: the same matches as
searching " entry " in the space-normalised text, without an Aho-Corasick dependency. Text and entries are
lowercased (MetaCLIP's metadata lists case variants instead).
Concepts: --concepts FILE (one entry a line, # comments), or, by default, derived from the input: every word
and word pair (no stopword, each word with a letter) found in at least --min-count samples. The derived
vocabulary is counted in memory: for hundreds of millions of captions pass a concept file (MetaCLIP's holds
500K entries from WordNet and Wikipedia).
Determinism: a sample's draws come from random.Random(stable_seed(seed, key)) in sorted entry order, so the
outcome depends on the seed, the key and the counts, not on shard order. Report entries: {key, shard,
reason: "balanced_out", p_keep, concepts: [[entry, count], ...] (most frequent first, at most 5)}.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from pathlib import Path

from mimovl.curate.runner import Item, Report, Step
from mimovl.curate.textfilter import supervised_text
from mimovl.data.stream import stable_seed
from mimovl.errors import UsageError

DEFAULT_T = 20_000  # MetaCLIP's t for its 400M-pair set
STOPWORDS = frozenset(
    "a an the and or but of in on at to for from by with without into onto over under above below near as is "
    "are was were be been being it its this that these those there here their they them he she his her we our "
    "you your i my me not no yes so than then very some any each every all both one s".split()
)
_SPACED = re.compile(r"([,.;:?!`])")


def tokens(text: str) -> list[str]:
    """Lowercased tokens after MetaCLIP's spacing (punctuation marks become tokens of their own)."""
    return _SPACED.sub(r" \1 ", text.lower()).split()


def read_concepts(path: str | Path) -> list[str]:
    """Entries of a concept file, normalised like the text (one a line; blank lines and # comments skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exn:
        raise UsageError(f"--concepts {path}: cannot read it ({exn})") from exn
    entries = []
    for line in lines:
        entry = " ".join(tokens(line.split("#", 1)[0]))
        if entry:
            entries.append(entry)
    if not entries:
        raise UsageError(f"--concepts {path}: no entry in the file")
    return entries


def candidate_concepts(words: list[str]) -> set[str]:
    """The words and word pairs of a text that may become derived concepts."""
    ok = [w not in STOPWORDS and any(c.isalpha() for c in w) for w in words]
    grams = {w for w, good in zip(words, ok) if good}
    grams.update(f"{a} {b}" for a, b, ga, gb in zip(words, words[1:], ok, ok[1:]) if ga and gb)
    return grams


class Balance(Step):
    name = "balance"
    default_types = ("caption",)

    def __init__(self, t: int = DEFAULT_T, seed: int = 0, concepts: str | None = None, min_count: int = 2,
                 keep_unmatched: bool = False, types=None):
        super().__init__(types)
        if t < 1:
            raise UsageError(f"--t must be at least 1, got {t}")
        self.t, self.seed, self.min_count, self.keep_unmatched = t, seed, min_count, keep_unmatched
        self.concepts_path = concepts
        self.entries: set[str] = set(read_concepts(concepts)) if concepts else set()
        self.max_n = max((e.count(" ") + 1 for e in self.entries), default=2)
        self.counts: Counter = Counter()
        self.kept: Counter = Counter()
        self.head: list[str] = []

    def params(self) -> dict:
        concepts = None
        if self.concepts_path:
            concepts = hashlib.sha256(Path(self.concepts_path).read_bytes()).hexdigest()
        return {"t": self.t, "seed": self.seed, "concepts_sha256": concepts, "min_count": self.min_count,
                "keep_unmatched": self.keep_unmatched}

    def input_files(self) -> list[str]:
        return [self.concepts_path] if self.concepts_path else []

    def match(self, words: list[str]) -> set[str]:
        """The concept entries a tokenised text matches."""
        if not self.concepts_path:
            return candidate_concepts(words) & self.entries
        return {g for n in range(1, self.max_n + 1) for i in range(len(words) - n + 1)
                if (g := " ".join(words[i:i + n])) in self.entries}

    def prepare(self, read) -> None:
        """The first pass: count the samples matching each entry (deriving the entries when no file names them)."""
        for item in read(decode=False):
            words = tokens(supervised_text(item.header))
            self.counts.update(self.match(words) if self.concepts_path else candidate_concepts(words))
        if not self.concepts_path:
            self.counts = Counter({e: c for e, c in self.counts.items() if c >= self.min_count})
            self.entries = set(self.counts)
        self.head = [e for e, _ in sorted(self.counts.items(), key=lambda ec: (-ec[1], ec[0]))[:20]]

    def process_one(self, item: Item, report: Report) -> dict | None:
        matched = sorted(self.match(tokens(supervised_text(item.header))))
        if not matched:
            if self.keep_unmatched:
                return item.record()
            report.remove(item, "no_concept")
            return None
        probs = [self.t / max(self.counts[e], self.t) for e in matched]
        rng = random.Random(stable_seed("balance", self.seed, item.key))
        if any(rng.random() < p for p in probs):
            self.kept.update(matched)
            return item.record()
        by_count = sorted(matched, key=lambda e: (-self.counts[e], e))[:5]
        report.remove(item, "balanced_out", p_keep=round(1 - math.prod(1 - p for p in probs), 6),
                      concepts=[[e, self.counts[e]] for e in by_count])
        return None

    def finish(self) -> dict:
        return {
            "t": self.t, "concepts": len(self.entries), "vocabulary": "file" if self.concepts_path else "derived",
            "head_concepts": [{"concept": e, "count": self.counts[e], "kept": self.kept[e]} for e in self.head],
        }
