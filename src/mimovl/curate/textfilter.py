"""filter: drop samples whose supervised text is too short or long, noisy, or repetitive.

    python -m mimovl.curate filter --input 'data/*.tar' --out 'cur/filter/train-%06d.tar' \
        [--config filter.yaml] [--min-chars 10] [--max-repeat-ratio 0.4] ...

The supervised text is what training learns to write: a document's text parts, a chat's assistant turns, a
preference sample's two answers, joined by newlines. Checks, in this order; the first that fails is the
reason in the report (with the measured value, its threshold and the text's first 80 characters):
  too_short / too_long     fewer than min_chars / more than max_chars characters
  control_chars            more than max_control_chars control characters (tab, newline, CR excepted)
  noise                    more than max_noise_fraction of the characters are not text: text is letters,
                           digits, punctuation (ASCII symbols such as + = $ included), math and currency
                           symbols, spaces; noise is emoji and other symbols, U+FFFD, format, private-use and
                           unassigned code points
  repeated_ngrams          more than max_dup_ngram_fraction of the word `ngram`-grams repeat an earlier one
  repeated_substring       the longest substring occurring twice (occurrences may overlap) is longer than
                           max_repeat_ratio of the text
The repetition checks apply from repetition_min_chars characters on ("11" is a fine answer). They follow
Gopher's repetition filters in spirit (Rae et al., 2021) with simpler measures; recaption reuses them.
Defaults: a sentence said three times ("X. X. X.") has a repeated-3-gram share above 0.6 and one said twice a
repeat ratio near 0.5, while templated but sound text stays below (mimovl.data.synthetic's reasoning and text
samples: at most 0.38 and 0.42).
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass, field

import numpy as np

from mimovl.curate.runner import Item, Report, Step
from mimovl.data.schema import DOCUMENT_TYPES


@dataclass
class FilterConfig:
    """Thresholds of the text filter; a YAML --config uses these names as keys."""

    min_chars: int = field(default=1, metadata={"help": "fewest characters of supervised text (1: not empty); "
                                                        "~10 suits caption-only data"})
    max_chars: int = field(default=32768, metadata={"help": "most characters (~8K tokens at ~4 characters each)"})
    max_control_chars: int = field(default=0, metadata={"help": "most control characters besides tab/newline/CR"})
    max_noise_fraction: float = field(default=0.1, metadata={"help": "largest share of non-text characters"})
    ngram: int = field(default=3, metadata={"help": "word n-gram length of the repeated-n-gram check"})
    max_dup_ngram_fraction: float = field(default=0.5, metadata={"help": "largest share of word n-grams that "
                                                                         "repeat an earlier one"})
    max_repeat_ratio: float = field(default=0.45, metadata={"help": "largest (longest repeated substring) / "
                                                                   "(text length)"})
    repetition_min_chars: int = field(default=40, metadata={"help": "texts shorter than this skip the "
                                                                    "repetition checks"})


def supervised_text(sample: dict) -> str:
    """The text training supervises in a sample (or its KEY.json header), joined by newlines."""
    if sample["type"] == "preference":
        pieces = [sample["meta"]["chosen"], sample["meta"]["rejected"]]
    else:
        roles = ("document",) if sample["type"] in DOCUMENT_TYPES else ("assistant",)
        pieces = [p["text"] for m in sample["messages"] if m["role"] in roles for p in m["content"]
                  if p["type"] == "text"]
    return "\n".join(pieces)


def text_problem(text: str, cfg: FilterConfig) -> tuple[str, dict] | None:
    """(reason, details) of the first check `text` fails, or None when it passes them all."""
    n = len(text)
    if n < cfg.min_chars:
        return "too_short", {"chars": n, "min_chars": cfg.min_chars}
    if n > cfg.max_chars:
        return "too_long", {"chars": n, "max_chars": cfg.max_chars}
    control, noise = char_noise(text)
    if control > cfg.max_control_chars:
        return "control_chars", {"control_chars": control, "max_control_chars": cfg.max_control_chars}
    if noise / n > cfg.max_noise_fraction:
        return "noise", {"noise_fraction": round(noise / n, 4), "max_noise_fraction": cfg.max_noise_fraction}
    return repetition_problem(text, cfg)


def repetition_problem(text: str, cfg: FilterConfig) -> tuple[str, dict] | None:
    """(reason, details) when `text` is repetitive (the last two checks of text_problem), else None."""
    if len(text) < cfg.repetition_min_chars:
        return None
    dup = dup_ngram_fraction(text, cfg.ngram)
    if dup > cfg.max_dup_ngram_fraction:
        return "repeated_ngrams", {"dup_ngram_fraction": round(dup, 4),
                                   "max_dup_ngram_fraction": cfg.max_dup_ngram_fraction}
    ratio = longest_repeat(text) / len(text)
    if ratio > cfg.max_repeat_ratio:
        return "repeated_substring", {"repeat_ratio": round(ratio, 4), "max_repeat_ratio": cfg.max_repeat_ratio}
    return None


_TEXT_CATEGORIES = ("L", "N", "P", "Z", "Sm", "Sc")
_WHITESPACE = frozenset("\t\n\r")


def char_noise(text: str) -> tuple[int, int]:
    """(control characters, non-text characters) of `text`; control characters count as non-text too."""
    if text.isascii():
        control = sum(1 for ch in text if (ch < " " and ch not in _WHITESPACE) or ch == "\x7f")
        return control, control
    control = noise = 0
    for ch in text:
        if ch in _WHITESPACE or ch.isascii() and " " <= ch <= "~":
            continue
        category = unicodedata.category(ch)
        if category == "Cc":
            control += 1
            noise += 1
        elif not category.startswith(_TEXT_CATEGORIES):
            noise += 1
    return control, noise


def dup_ngram_fraction(text: str, n: int) -> float:
    """Share of the word n-grams (lowercased) that repeat an earlier one; 0 with no n-gram."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64


def longest_repeat(text: str) -> int:
    """Length of the longest substring occurring at least twice in `text` (occurrences may overlap).

    Written here (no maintained package does it for plain strings): a binary search over the length, each
    length checked with polynomial rolling hashes modulo 2**64 in numpy, every hash collision verified on
    the strings themselves, so the answer is exact. O(n log n).
    """
    n = len(text)
    if n < 2:
        return 0
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64) + np.uint64(1)
    # window hash(i, L) = sum_j codes[i + j] * B**-j = (G[i + L] - G[i]) * B**i: the same for equal windows
    inv_pows = np.cumprod(np.r_[np.uint64(1), np.full(n - 1, pow(_BASE, -1, 2**64), dtype=np.uint64)])
    pows = np.cumprod(np.r_[np.uint64(1), np.full(n - 1, _BASE, dtype=np.uint64)])
    prefix = np.r_[np.uint64(0), np.cumsum(codes * inv_pows, dtype=np.uint64)]

    def repeats(length: int) -> bool:
        hashes = (prefix[length:] - prefix[:-length]) * pows[: n - length + 1]
        order = np.argsort(hashes, kind="stable")
        sorted_hashes = hashes[order]
        same = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
        for k in same[:64]:  # a true repeat shows in the first pairs unless hashes collide on purpose
            a, b = order[k], order[k + 1]
            if text[a:a + length] == text[b:b + length]:
                return True
        groups: dict[int, set[int]] = {}
        for k in same:
            groups.setdefault(int(sorted_hashes[k]), set()).update((int(order[k]), int(order[k + 1])))
        return any(len({text[p:p + length] for p in ps}) < len(ps) for ps in groups.values())

    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if repeats(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


class TextFilter(Step):
    name = "filter"

    def __init__(self, config: FilterConfig | None = None, types=None):
        super().__init__(types)
        self.config = config or FilterConfig()

    def params(self) -> dict:
        return asdict(self.config)

    def process_one(self, item: Item, report: Report) -> dict | None:
        text = supervised_text(item.header)
        problem = text_problem(text, self.config)
        if problem is not None:
            reason, details = problem
            report.remove(item, reason, **details, excerpt=text[:80])
            return None
        return item.record()
