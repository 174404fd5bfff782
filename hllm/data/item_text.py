"""Item text -> token ids -> packed (or padded) batches for the Item LLM.

Text follows the reference code: a prompt prefix, then each non-empty field as
`<field>: <value>`, joined by `field_separator`; tokenized with the backbone's
tokenizer (BOS first) and hard-truncated to `max_text_len` tokens. With
`[ITEM]`-token pooling one extra slot is appended after the text; the model
replaces that slot's input embedding with a learned vector.

Two batch layouts feed the same model and give the same embeddings:

* packed: items are laid end to end in rows of at most `pack_len` tokens, with
  position ids restarting at 0 for every item and a segment id per token, so
  attention never crosses item boundaries and no compute goes to padding
  (only the short tail of each row is padded);
* padded: one row per item, right-padded to the longest item, with an attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch


class Tokenizer(Protocol):
    bos_id: int | None
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 260): lets tiny random models run without any files."""

    bos_id = 256
    pad_id = 257
    vocab_size = 260

    def encode(self, text: str) -> list[int]:
        return [self.bos_id, *text.encode("utf-8")]


class HFTokenizer:
    """A Hugging Face tokenizer that always starts with BOS when the model has one."""

    def __init__(self, directory, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
        self.bos_id = self.tok.bos_token_id
        pad = self.tok.pad_token_id
        self.pad_id = pad if pad is not None else (self.tok.eos_token_id or 0)

    def encode(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return [self.bos_id, *ids] if self.bos_id is not None else list(ids)


def item_prompt(fields: dict[str, str], prompt: str, separator: str = " ") -> str:
    parts = [f"{name}: {value}" for name, value in fields.items() if value and value.strip()]
    return prompt + separator.join(parts)


def tokenize_items(texts: Sequence[dict[str, str]], tokenizer: Tokenizer, *, prompt: str,
                   separator: str, max_len: int) -> list[list[int]]:
    """Token ids for every item (index-aligned with `texts`), truncated to max_len."""
    return [tokenizer.encode(item_prompt(t, prompt, separator))[:max_len] for t in texts]


@dataclass
class ItemBatch:
    """Token layout for a set of items; `forward` of ItemLLM reads it.

    input_ids, position_ids, segment_ids: (R, T). segment_ids[r, t] is the index (in
    this batch) of the item that token belongs to, or -1 for padding. readout: (n,)
    flat index (r * T + t) of each item's read-out slot (its [ITEM] slot, or its last
    token), item_slots: (R, T) True where the learned [ITEM] vector goes in.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    readout: torch.Tensor
    item_slots: torch.Tensor
    packed: bool

    @property
    def num_items(self) -> int:
        return int(self.readout.numel())

    @property
    def num_tokens(self) -> int:
        return int((self.segment_ids >= 0).sum())

    def to(self, device: torch.device | str) -> "ItemBatch":
        return ItemBatch(self.input_ids.to(device), self.position_ids.to(device),
                         self.segment_ids.to(device), self.readout.to(device),
                         self.item_slots.to(device), self.packed)

    def attention_mask_4d(self, causal: bool) -> torch.Tensor:
        """(R, 1, T, T) bool: a token sees tokens of its own item (earlier ones if causal)."""
        seg = self.segment_ids
        mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] >= 0)
        if causal:
            t = seg.size(1)
            mask &= torch.ones(t, t, dtype=torch.bool, device=seg.device).tril()
        # Padding rows attend to themselves so softmax never sees an all-masked row.
        mask |= torch.eye(seg.size(1), dtype=torch.bool, device=seg.device)
        return mask[:, None]


def _lengths(token_ids: Sequence[Sequence[int]], with_item_slot: bool) -> list[int]:
    return [len(ids) + int(with_item_slot) for ids in token_ids]


def padded_batch(token_ids: Sequence[Sequence[int]], pad_id: int, with_item_slot: bool) -> ItemBatch:
    """One right-padded row per item."""
    lengths = _lengths(token_ids, with_item_slot)
    n, width = len(token_ids), max(lengths)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    segment_ids = torch.full((n, width), -1, dtype=torch.long)
    item_slots = torch.zeros((n, width), dtype=torch.bool)
    for i, ids in enumerate(token_ids):
        input_ids[i, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
        segment_ids[i, : lengths[i]] = i
        if with_item_slot:
            item_slots[i, lengths[i] - 1] = True
    position_ids = torch.arange(width).expand(n, width).clone()
    readout = torch.arange(n) * width + torch.as_tensor(lengths) - 1
    return ItemBatch(input_ids, position_ids, segment_ids, readout, item_slots, packed=False)


def packed_batch(token_ids: Sequence[Sequence[int]], pad_id: int, with_item_slot: bool,
                 pack_len: int = 512) -> ItemBatch:
    """Items laid end to end in rows of <= pack_len tokens (first-fit decreasing)."""
    lengths = _lengths(token_ids, with_item_slot)
    pack_len = max(pack_len, max(lengths))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for r, free in enumerate(room):
            if free >= lengths[i]:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(pack_len - lengths[i])
    width = max(pack_len - free for free in room)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    item_slots = torch.zeros((len(rows), width), dtype=torch.bool)
    readout = torch.empty(len(lengths), dtype=torch.long)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            ids, length = token_ids[i], lengths[i]
            input_ids[r, start: start + len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
            position_ids[r, start: start + length] = torch.arange(length)
            segment_ids[r, start: start + length] = i
            if with_item_slot:
                item_slots[r, start + length - 1] = True
            readout[i] = r * width + start + length - 1
            start += length
        if start < width:
            # Padding continues the last item's positions, so a decoder's packed-sequence
            # detection (a restart at 0 marks a new item) never sees an extra sequence.
            last = lengths[members[-1]]
            position_ids[r, start:] = torch.arange(last, last + width - start)
    return ItemBatch(input_ids, position_ids, segment_ids, readout, item_slots, packed=True)


def token_budget_chunks(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Split item indices into consecutive chunks of at most `budget` tokens each."""
    chunks, current, used = [], [], 0
    for i, length in enumerate(lengths):
        if current and used + length > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(i)
        used += length
    if current:
        chunks.append(current)
    return chunks
