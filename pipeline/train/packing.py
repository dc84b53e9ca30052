"""Batches for training: padded, or packed without padding and without cross-contamination.

A packed batch holds exactly the examples of the padded batch it replaces, laid first-fit-decreasing into rows of at
most `row_len` tokens. Position ids restart at 0 for every example and no attention mask is passed, so transformers
builds a block-diagonal causal mask from them (masking_utils.find_packed_sequence_indices): each example's loss equals
its padded loss. The first label of every packed example is -100, as in TRL's padding-free collator: the shifted
loss would otherwise predict it from the previous example's last token. Why not TRL's: docs/stages/train.md.
"""

from __future__ import annotations

from dataclasses import dataclass


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins whose sums are at most `capacity`.

    Longest first, each into the first bin it fits; an item longer than `capacity` gets a bin
    of its own (the caller truncates before that can happen).
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


@dataclass
class SFTCollator:
    """Collates {"input_ids", "labels"} examples for causal-LM training.

    pack=False: rows padded on the right to the batch's longest example, with an attention mask.
    pack=True: examples packed into rows of at most `row_len` tokens, with position ids.
    """

    pad_token_id: int
    pack: bool = False
    row_len: int = 0

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        if not self.pack:
            width = max(len(ex["input_ids"]) for ex in examples)
            ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            mask = torch.zeros_like(ids)
            for row, ex in enumerate(examples):
                n = len(ex["input_ids"])
                ids[row, :n] = torch.tensor(ex["input_ids"])
                labels[row, :n] = torch.tensor(ex["labels"])
                mask[row, :n] = 1
            return {"input_ids": ids, "labels": labels, "attention_mask": mask}

        lengths = [len(ex["input_ids"]) for ex in examples]
        rows = first_fit_decreasing(lengths, max(self.row_len, max(lengths)))
        width = max(sum(lengths[i] for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        positions = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                n = lengths[i]
                ids[r, start:start + n] = torch.tensor(examples[i]["input_ids"])
                labels[r, start:start + n] = torch.tensor(examples[i]["labels"])
                labels[r, start] = -100
                positions[r, start:start + n] = torch.arange(n)
                start += n
            # Padding continues the last example's positions: it comes after every real token,
            # so causal attention keeps it out of their outputs, and it carries no label.
            positions[r, start:] = torch.arange(positions[r, start - 1] + 1, positions[r, start - 1] + 1 + width - start)
        return {"input_ids": ids, "labels": labels, "position_ids": positions}
