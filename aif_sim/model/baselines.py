"""Baselines: the sequential pre-ranker that computes everything online, and a two-tower dot product."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aif_sim.model.config import ModelConfig
from aif_sim.model.inputs import ItemInputs, UserInputs
from aif_sim.model.towers import ItemTower, UserTower, mlp


class TargetAttention(nn.Module):
    """Each candidate [B, C, dim] attends over the behaviour sequence [B, Ls, dim]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, cand: Tensor, seq: Tensor) -> Tensor:
        weights = torch.softmax(self.query(cand) @ self.key(seq).transpose(1, 2) * self.scale, dim=-1)
        return weights @ self.value(seq)


class SequentialModel(nn.Module):
    """Online for every candidate: item tower, target attention over the short sequence, and attention over
    the long-term behaviours by exact cosine similarity of multi-modal embeddings (SIM soft search)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.user_tower = UserTower(cfg)
        self.item_tower = ItemTower(cfg)
        self.short_attention = TargetAttention(cfg.dim)
        self.long_value = nn.Linear(cfg.mm_dim, cfg.dim)
        self.long_temperature = nn.Parameter(torch.tensor(10.0))
        self.head = mlp(6 * cfg.dim + 1, cfg.rtp_hidden, cfg.rtp_hidden // 2, 1)

    def forward(self, users: UserInputs, items: ItemInputs) -> Tensor:
        """Logits [B, C] for candidates items [B, C]."""
        user, seq = self.user_tower(users)
        item = self.item_tower(items)
        short = self.short_attention(item, seq)
        cosine = nn.functional.normalize(items.mm, dim=-1) @ nn.functional.normalize(users.long_mm, dim=-1).transpose(1, 2)
        logits = cosine * self.long_temperature
        long = torch.softmax(logits, dim=-1) @ self.long_value(users.long_mm)
        mass = torch.logsumexp(logits, dim=-1, keepdim=True) - math.log(users.long_mm.shape[1])
        user = user[:, None, :].expand_as(item)
        return self.head(torch.cat([user, item, user * item, short, short * item, long, mass], dim=-1)).squeeze(-1)


class TwoTowerModel(nn.Module):
    """Dot product of the user vector and the item vector."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.user_tower = UserTower(cfg)
        self.item_tower = ItemTower(cfg)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, users: UserInputs, items: ItemInputs) -> Tensor:
        """Logits [B, C] for candidates items [B, C]."""
        user, _ = self.user_tower(users)
        return (user[:, None, :] * self.item_tower(items)).sum(-1) + self.bias
