"""Token embedding and the LM head (tied to the embedding when the model says so)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from localllm.layers.linear import _param, default_weight_loader, prefers_transposed


class VocabEmbedding(nn.Module):
    """embed_tokens: weight [vocab_size, hidden_size]."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype, device: torch.device,
                 used_as_lm_head: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        # A tied weight is laid out for the LM head's GEMV: lookups barely notice the stride.
        transposed = used_as_lm_head and prefers_transposed(hidden_size, vocab_size, dtype, device)
        self.weight = _param((vocab_size, hidden_size), dtype, device, default_weight_loader, transposed)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """lm_head: logits = hidden @ weight^T. With tie_to, shares the embedding's weight (one tensor,
    no copy): the checkpoint's lm_head.weight, if any, is then ignored."""

    def __init__(
        self, vocab_size: int, hidden_size: int, dtype: torch.dtype, device: torch.device,
        tie_to: VocabEmbedding | None = None,
    ):
        super().__init__()
        self.tied = tie_to is not None
        if tie_to is not None:
            self.weight = tie_to.weight
        else:
            transposed = prefers_transposed(hidden_size, vocab_size, dtype, device)
            self.weight = _param((vocab_size, hidden_size), dtype, device, default_weight_loader, transposed)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [N, vocab_size]."""
        return F.linear(hidden, self.weight).float()
