"""Synthetic, checkable samples of every type, drawn with PIL, for tests and CPU smoke runs.

    shards = ensure_synthetic("data/synth", n_per_type=256)            # {type: [shard paths]}, split "train"
    held = ensure_synthetic("data/synth", n_per_type=64, split="heldout")

Layout: root/{split}/{type}/{type}-%06d.tar plus root/{split}/DONE.json (written last; ensure_synthetic
regenerates only when it is missing or was written with other arguments).

The tasks use a vocabulary of a few dozen words (COLORS, SHAPES, WORDS, BUTTONS, number words), so a tiny
byte-level BPE covers them. Scenes place shapes in the cells of a 28-pixel grid, so objects never overlap and
every box is exact. Each sample draws from its own random.Random seeded by (split, seed, type, index): the
output depends only on those, and "heldout" never shares a random stream with "train".
Samples meant for RL carry meta["task"] (a key of mimovl.rewards.REWARDS) and meta["answer"]. Preference pairs
are checkable too: the chosen answer is right (a colour, a count, a sum) or polite and helpful, the rejected one
wrong or rude; half of them are text-only.

Modules:
  draw    the vocabulary and the PIL drawing of scenes, text lines and shapes
  tasks   one sample maker per type (and its variants), and make_sample
  write   write_synthetic / ensure_synthetic: the shards on disk and their DONE marker
"""

from mimovl.data.synthetic.draw import BUTTONS, CELL, COLORS, NUMBER_WORDS, SHAPES, WORDS
from mimovl.data.synthetic.tasks import make_sample
from mimovl.data.synthetic.write import DONE, ensure_synthetic, write_synthetic

__all__ = [
    "BUTTONS",
    "CELL",
    "COLORS",
    "DONE",
    "NUMBER_WORDS",
    "SHAPES",
    "WORDS",
    "ensure_synthetic",
    "make_sample",
    "write_synthetic",
]
