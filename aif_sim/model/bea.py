"""Bridge Embedding Approximation (BEA) of target attention over the short behaviour sequence.

Exact target attention lets every candidate attend over every behaviour: O(C * Ls) per request, online.
BEA routes it through n learnable bridge embeddings: on the user side each bridge attends over the
behaviours (user-bridge representations R_u [n, dim]); on the item side each item attends over the
bridges (item-bridge weights w_i [n]); in real time only w_i @ R_u remains: O(C * n * dim).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BridgeAttention(nn.Module):
    """n learnable bridges between items and the behaviour sequence (n >= 1)."""

    def __init__(self, n_bridges: int, dim: int) -> None:
        super().__init__()
        self.bridges = nn.Parameter(torch.randn(n_bridges, dim) / math.sqrt(dim))
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def user_part(self, seq: Tensor) -> Tensor:
        """User-bridge representations [B, n, dim] from the behaviour sequence [B, Ls, dim]."""
        weights = torch.softmax(self.bridges @ self.key(seq).transpose(1, 2) * self.scale, dim=-1)
        return weights @ self.value(seq)

    def item_part(self, item_vec: Tensor) -> Tensor:
        """Item-bridge weights [..., n] from item vectors [..., dim]: softmax_k(q_i · B_k · scale), q_i = query(v_i).

        Computed with the query projection folded into the bridges (B Wq v + B bq) and transposed, [n, items],
        so that the softmax runs over the short first axis with the items in the vectorised one (a softmax
        over a last axis of n = 8 is about 20x slower in torch)."""
        flat = item_vec.reshape(-1, item_vec.shape[-1])
        keys = self.bridges @ self.query.weight * self.scale  # [n, dim]
        logits = torch.addmm((self.bridges @ self.query.bias * self.scale)[:, None], keys, flat.T)
        return logits.softmax(dim=0).T.reshape(*item_vec.shape[:-1], len(self.bridges))

    @staticmethod
    def combine(item_weights: Tensor, user_bridges: Tensor) -> Tensor:
        """Approximate target-attention output [B, C, dim] from item weights [B, C, n] and user bridges [B, n, dim]."""
        return item_weights @ user_bridges
