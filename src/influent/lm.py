"""Causal-LM inputs for attribution: training documents packed to a fixed length, and prompt + completion
queries whose loss counts only the completion's tokens (Task.language_modeling() batches)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .errors import InputError


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids)


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = getattr(tokenizer, "eos_token_id", None) if pad is None else pad
    return 0 if pad is None else int(pad)


def pack_documents(tokenizer: Any, texts: Sequence[str], length: int, n: int,
                   separator: str = "\n") -> tuple[dict[str, Tensor], list[str]]:
    """Up to `n` training documents of at most `length` tokens, each a run of whole consecutive texts.

    Texts are packed greedily (a text that does not fit starts the next document; one longer than
    `length` is cut); the rest of a document is padding with attention_mask 0, which the loss skips.
    Returns ({"input_ids", "attention_mask"} [n, length], the documents' text).
    """
    if length < 2 or n < 1:
        raise InputError(f"need length >= 2 and n >= 1, got length={length}, n={n}")
    sep = _token_ids(tokenizer, separator) if separator else []
    docs: list[list[int]] = []
    words: list[list[str]] = []
    current: list[int] = []
    parts: list[str] = []
    for text in texts:
        ids = _token_ids(tokenizer, text)[:length]
        piece = (sep + ids) if current else ids
        if current and len(current) + len(piece) > length:
            docs.append(current), words.append(parts)
            current, parts, piece = [], [], ids
            if len(docs) == n:
                break
        current, parts = current + piece, parts + [text]
    if current and len(docs) < n:
        docs.append(current), words.append(parts)
    if not docs:
        raise InputError("no training text to pack: the corpus is empty")
    input_ids = torch.full((len(docs), length), _pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros(len(docs), length, dtype=torch.long)
    for i, d in enumerate(docs):
        input_ids[i, : len(d)] = torch.tensor(d)
        mask[i, : len(d)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}, [separator.join(p) for p in words]


def completion_batch(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> dict[str, Tensor]:
    """Prompt + completion queries, right-padded to the longest: labels are −100 on the prompt and the
    padding, so each query's loss is the mean next-token loss of its completion alone."""
    if not pairs:
        raise InputError("give at least one (prompt, completion) pair")
    rows = []
    for prompt, completion in pairs:
        p, c = _token_ids(tokenizer, prompt), _token_ids(tokenizer, completion)
        if not c:
            raise InputError(f"the completion of {prompt!r} has no tokens")
        rows.append((p, c))
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), _pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, c) in enumerate(rows):
        seq = torch.tensor(p + c)
        ids[i, : len(seq)], mask[i, : len(seq)] = seq, 1
        labels[i, len(p): len(seq)] = seq[len(p):]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
