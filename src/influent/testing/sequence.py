"""Tiny token models for sequence tests: a GPT-2-style Conv1D layer and a per-token MLP language model."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Conv1D(nn.Module):
    """Same layout as transformers' Conv1D (y = x W + b, W stored [d_in, nf]) without importing transformers."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight + self.bias


class TinyLM(nn.Module):
    """Embedding -> Conv1D -> tanh -> Linear, applied per token (no attention): logits [B, T, V]."""

    def __init__(self, vocab: int = 11, d: int = 6, hidden: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.up = Conv1D(hidden, d)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(torch.tanh(self.up(self.embed(ids))))


def token_batch(n: int = 5, length: int = 7, vocab: int = 11, seed: int = 0) -> dict[str, Tensor]:
    """Random token sequences with a few trailing positions unscored (labels −100), as a dict batch."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    labels = ids.clone()
    cut = torch.randint(length // 2, length + 1, (n,), generator=g)
    labels[torch.arange(length)[None, :] >= cut[:, None]] = -100
    return {"input_ids": ids, "labels": labels}


class WordTokenizer:
    """A stand-in for a Hugging Face tokenizer: one id per whitespace-separated word (stable hash mod vocab)."""

    def __init__(self, vocab: int = 50, pad_token_id: int = 0) -> None:
        self.vocab, self.pad_token_id, self.eos_token_id = vocab, pad_token_id, pad_token_id

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [1 + sum(map(ord, w)) % (self.vocab - 1) for w in text.split()]}


def tiny_llama(vocab: int = 50, seed: int = 0, dtype: torch.dtype = torch.float64):
    """A 2-block LlamaForCausalLM with random weights (needs transformers): SmolLM2's layout in miniature."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(dtype).eval()
