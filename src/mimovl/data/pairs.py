"""Preference pairs as the reward model reads them: a prompt answered by the chosen and by the rejected answer.

A `preference` sample (see `mimovl.data.schema`) is a prompt plus meta["chosen"] and meta["rejected"]. Each
answer becomes the assistant turn of a chat encoded by `mimovl.data.encode.encode`, cut right after the
`<|im_end|>` that closes it: the last token of every sequence is where a reward model reads its score. Pairs
are packed whole, chosen first, so in each row segments (1, 2), (3, 4), ... are pairs, and in row-major order
every odd sequence of a batch is a chosen answer and the next one its rejected twin. Training streams them
through `mimovl.data.preference`; a reward model scores (prompt, response) with `encode_response`.
"""

from collections import Counter
from dataclasses import dataclass, field

import torch

from mimovl.data.encode import END_OF_TURN, Encoded, encode
from mimovl.data.packing import Row, collate_rows


def is_text_only(sample: dict) -> bool:
    """True when the sample has no image and no video."""
    return not sample.get("images") and not sample.get("videos")


def with_response(sample: dict, response: str) -> dict:
    """The chat of `sample`'s prompt answered by `response` (a new dict; `sample` is left as it is)."""
    answer = {"role": "assistant", "content": [{"type": "text", "text": response}]}
    return {**sample, "messages": list(sample["messages"]) + [answer]}


def encode_response(sample: dict, response: str, processor) -> Encoded:
    """`sample`'s prompt + `response` as model tokens, ending with the `<|im_end|>` that closes the response."""
    encoded = encode(with_response(sample, response), processor)
    end_id = processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
    end = int((encoded.input_ids == end_id).nonzero()[-1]) + 1  # the chat template adds a newline after it
    encoded.input_ids = encoded.input_ids[:end]
    encoded.targets = encoded.targets[:end]
    encoded.mm_token_type_ids = encoded.mm_token_type_ids[:end]
    return encoded


@dataclass(eq=False)
class Pair:
    """A chosen and a rejected answer to one prompt; packs as one unit of their summed length."""

    chosen: Encoded
    rejected: Encoded
    skipped: int = 0  # corrupt samples read just before this pair (or before the samples the modality drops)
    dropped: Counter = field(default_factory=Counter)  # the same by reason, plus shard errors (stream.DROPPED)
    type: str = "preference"

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def encode_pair(sample: dict, processor) -> Pair:
    """Both answers of a preference sample, encoded (ValueError for a sample of another type)."""
    if sample["type"] != "preference":
        raise ValueError(
            f"sample {sample.get('key')} (source {sample.get('source')}) is a {sample['type']!r} sample; a reward "
            "model trains on 'preference' samples only: give stage.mix preference sources only"
        )
    chosen, rejected = sample["meta"]["chosen"], sample["meta"]["rejected"]
    return Pair(encode_response(sample, chosen, processor), encode_response(sample, rejected, processor))


def unpack_pairs(row: Row) -> Row:
    """A row of Pairs as a row of Encoded sequences: each pair's chosen answer, then its rejected one."""
    sequences = [e for pair in row.samples for e in (pair.chosen, pair.rejected)]
    return Row(samples=sequences, skipped=row.skipped, too_long=row.too_long, dropped=row.dropped, split=row.split)


def collate_pairs(rows: list[Row], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """`collate_rows` of rows of Pairs, plus `pairs`: how many pairs the batch holds."""
    batch = collate_rows([unpack_pairs(r) for r in rows], seq_len, pad_id)
    batch["pairs"] = torch.tensor(sum(len(r.samples) for r in rows))
    return batch
