"""MathVista / Geometry3K-style visual math -> "qa" chats with an RL answer.

Accepted layout: a JSON list (or JSONL) of

    {"image": "images/1.jpg",                       # under --media-root
     "question": "What is the value of x?",
     "answer": "145°",                              # a string (numbers are accepted and turned into strings)
     "choices": ["35°", "145°", "55°", "125°"],     # optional; null or absent: a free-form question
     "pid": "1"}                                    # optional, kept as meta["id"]

(MathVista's testmini rows hold these fields among others; its "query" prompt is not used.)
Free form: the user sees the image and the question, the answer reads `answer`, meta {"task": "math", "answer"}.
With choices: the question is followed by the options as "(A) 35°" lines and "Answer with the option's
letter."; the answer reads the letter, meta {"task": "multiple_choice", "answer": letter, "choices"}. The
gold may be the text of a choice (MathVista) or its letter ("B", "(B)": Geometry3K style).
Skipped and counted: a gold that is neither a choice nor a letter of one ("answer_not_in_choices"), more than
26 choices ("bad_choices"), a missing or unreadable image, a missing field.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path

from mimovl.data.convert.common import Counts, Skip, convert_rows, key_stem, load_image, need, read_rows
from mimovl.data.schema import as_letter, chat, image, text

LETTERS = string.ascii_uppercase
CHOICE_INSTRUCTION = "Answer with the option's letter."


def convert(path: str | Path, media_root: str | Path, counts: Counts) -> Iterator[dict]:
    """Schema samples from a MathVista-style file (layout in the module docstring)."""
    return convert_rows(read_rows(path), lambda row, key: [_sample(row, key, Path(media_root))], counts,
                        key_stem(path))


def _sample(row: dict, key: str, media_root: Path) -> dict:
    question = need(row, "question", str).strip()
    answer = str(need(row, "answer", (str, int, float))).strip()
    choices = row.get("choices")
    if choices:
        if not (isinstance(choices, list) and all(isinstance(c, (str, int, float)) for c in choices)):
            raise Skip("bad_choices", f"choices must be a list of strings: {choices!r}")
        if len(choices) > len(LETTERS):
            raise Skip("bad_choices", f"{len(choices)} choices, at most {len(LETTERS)}")
        choices = [str(c).strip() for c in choices]
        letter = _gold_letter(answer, choices)
        options = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
        prompt = f"{question}\n{options}\n{CHOICE_INSTRUCTION}"
        reply, meta = letter, {"task": "multiple_choice", "answer": letter, "choices": choices}
    else:
        prompt, reply, meta = question, answer, {"task": "math", "answer": answer}
    img = load_image(media_root, need(row, "image", str))
    ident = row.get("pid", row.get("id"))
    if ident is not None:
        meta["id"] = str(ident)
    return {
        "key": key,
        "type": "qa",
        "messages": chat([image(), text(prompt)], reply),
        "images": [img],
        "videos": [],
        "meta": meta,
    }


def _gold_letter(answer: str, choices: list[str]) -> str:
    if answer in choices:
        return LETTERS[choices.index(answer)]
    letter = as_letter(answer)
    if letter is not None and LETTERS.index(letter) < len(choices):
        return letter
    raise Skip("answer_not_in_choices", f"{answer!r} is not one of {choices}")
