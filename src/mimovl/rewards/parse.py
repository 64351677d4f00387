"""Reading model responses: the final answer, and the box, point, segment, integer or letter in it.

    text = final_answer(response)      # None: no answer (an unclosed <think>); else at most MAX_ANSWER_CHARS
    last_box(text)                     # [x1, y1, x2, y2] floats, or None

Every reader takes the final answer text and returns None when it finds nothing usable; none raises on
arbitrary text. Their regular expressions are linear and run on at most MAX_ANSWER_CHARS characters.
"""

from __future__ import annotations

import re

from mimovl.data.schema import as_letter

# Only the end of the answer is read: the final answer comes last, and this caps the cost of adversarial text.
MAX_ANSWER_CHARS = 2000
# What a reward model scores of a response: its last this many characters (about 2K tokens; response_tail).
MAX_RESPONSE_CHARS = 8192

_NUMBER = r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)"
_BOX = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]")
_POINT = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]|\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)")
_TIME = r"\d{1,2}(?::\d{2}){1,2}(?:\.\d+)?"  # m:ss, mm:ss or hh:mm:ss, optional fraction of a second
_SEGMENT = re.compile(rf"\[\s*({_TIME})\s*,\s*({_TIME})\s*\]")
# counting: a number (a sign only when no word or number touches it), or a word that may be a number word
_COUNT_TOKEN = re.compile(r"(?<![A-Za-z0-9.])-?\d+(?:\.\d+)?|[A-Za-z]+")
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_MAX_COUNT_DIGITS = 18
# multiple choice: "(b)" in any case, or a capital letter that no letter, digit or apostrophe touches
_OPTION = re.compile(r"\(([A-Za-z])\)|(?<![A-Za-z0-9'’])([A-Z])(?![A-Za-z0-9'’])")
_ENGLISH_WORD = re.compile(r"\s+[a-z]")  # after "I" or "A": "I think", "A good guess" are words, not options


def response_tail(response: str, max_chars: int | None) -> str:
    """The last `max_chars` characters of `response` (all of it when None): what a reward model scores of a long
    response, so that its cost is bounded. The end is kept because the final answer comes last."""
    return response if max_chars is None or len(response) <= max_chars else response[-max_chars:]


def final_answer(response: str) -> str | None:
    """The answer part of a response: the text after the last `</think>`, or the whole response when it has
    no `</think>`; None when `<think>` is left open in that part (the model never answered). Only the last
    MAX_ANSWER_CHARS characters are kept."""
    if not isinstance(response, str):
        return None
    end = response.rfind("</think>")
    answer = response if end < 0 else response[end + len("</think>") :]
    if "<think>" in answer:
        return None
    return answer[-MAX_ANSWER_CHARS:]


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (nested braces allowed), or None when there is none or the
    last one is not closed."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = start + len("\\boxed")
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def last_box(text: str) -> list[float] | None:
    """The last `[x1, y1, x2, y2]` of four plain numbers (JSON such as `{"bbox_2d": [...]}` included)."""
    match = _last(_BOX, text)
    return None if match is None else [float(v) for v in match.groups()]


def last_point(text: str) -> list[float] | None:
    """The last `[x, y]` or `(x, y)` of two plain numbers (JSON such as `{"point": [x, y]}` included)."""
    match = _last(_POINT, text)
    return None if match is None else [float(v) for v in match.groups() if v is not None]


def last_segment(text: str) -> list[float] | None:
    """The last `[t1, t2]` with times m:ss, mm:ss or hh:mm:ss, as [start, end] in seconds; None when there is
    none or one of its times is out of range (seconds, or minutes of hh:mm:ss, of 60 or more)."""
    match = _last(_SEGMENT, text)
    if match is None:
        return None
    times = [_seconds(t) for t in match.groups()]
    return None if None in times else times


def last_int(text: str) -> int | None:
    """The last number in the text, written in digits or as a word zero..twenty, if it is an integer; None
    when the last number is a decimal, has more than 18 digits, or there is no number."""
    for match in reversed(list(_COUNT_TOKEN.finditer(text))):
        token = match.group()
        if token[-1].isdigit():
            if "." in token or len(token.lstrip("-")) > _MAX_COUNT_DIGITS:
                return None
            return int(token)
        if token.lower() in _NUMBER_WORDS:
            return _NUMBER_WORDS[token.lower()]
    return None


def choice_letter(text: str) -> str | None:
    """The option letter a final answer picks, upper-cased, or None.

    In order: the content of the last `\\boxed{}` if there is one, then the whole text if it is a letter
    (see `as_letter`), else the last option marker in it: "(x)" in any case, or a capital A-Z that no letter,
    digit or apostrophe touches, except "I" or "A" followed by a lower-case word ("I think", "A good").
    So "The answer is B" picks B, and text naming several options ("B or C") picks the last one (C).
    """
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    letter = as_letter(text)
    if letter is not None:
        return letter
    for match in reversed(list(_OPTION.finditer(text))):
        letter = match.group(1) or match.group(2)
        if letter in "IA" and match.group(2) and _ENGLISH_WORD.match(text, match.end()):
            continue
        return letter.upper()
    return None


def _last(pattern: re.Pattern, text: str) -> re.Match | None:
    match = None
    for match in pattern.finditer(text):
        pass
    return match


def _seconds(time: str) -> float | None:
    *hours_minutes, seconds = time.split(":")
    seconds = float(seconds)
    if seconds >= 60 or (len(hours_minutes) == 2 and int(hours_minutes[1]) >= 60):
        return None
    value = 0
    for part in hours_minutes:
        value = 60 * value + int(part)
    return 60 * value + seconds
