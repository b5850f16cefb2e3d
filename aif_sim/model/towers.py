"""Feature embeddings, the item tower and the user tower (profile + self-attention over the short sequence)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aif_sim.model.config import ModelConfig
from aif_sim.model.inputs import ItemInputs, UserInputs

FIELD_DIM = 16


def mlp(*sizes: int) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ItemEmbedding(nn.Module):
    """Embeds an item's categorical features and projects its multi-modal embedding: [...] -> [..., dim]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.category = nn.Embedding(cfg.n_categories, FIELD_DIM)
        self.brand = nn.Embedding(cfg.n_brands, FIELD_DIM)
        self.price = nn.Embedding(cfg.n_price_buckets, FIELD_DIM)
        self.pop = nn.Embedding(cfg.n_pop_buckets, FIELD_DIM)
        self.mm = nn.Linear(cfg.mm_dim, FIELD_DIM)
        self.out = nn.Linear(5 * FIELD_DIM, cfg.dim)

    def forward(self, items: ItemInputs) -> Tensor:
        parts = [self.category(items.category), self.brand(items.brand), self.price(items.price), self.pop(items.pop), self.mm(items.mm)]
        return self.out(torch.cat(parts, dim=-1))


class ItemTower(nn.Module):
    """Item vector [..., dim] from item features."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = ItemEmbedding(cfg)
        self.mlp = mlp(cfg.dim, 2 * cfg.dim, cfg.dim)

    def forward(self, items: ItemInputs) -> Tensor:
        return self.mlp(torch.relu(self.embed(items)))


class UserTower(nn.Module):
    """User vector [B, dim] and the self-attended short behaviour sequence [B, Ls, dim]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.profile = nn.ModuleList(nn.Embedding(n, FIELD_DIM) for n in cfg.profile_sizes)
        self.behaviour = ItemEmbedding(cfg)
        self.attention = nn.MultiheadAttention(cfg.dim, num_heads=2, batch_first=True)
        self.norm = nn.LayerNorm(cfg.dim)
        self.mlp = mlp(len(cfg.profile_sizes) * FIELD_DIM + cfg.dim, 2 * cfg.dim, cfg.dim)

    def forward(self, users: UserInputs) -> tuple[Tensor, Tensor]:
        seq = self.behaviour(users.short)
        attended, _ = self.attention(seq, seq, seq, need_weights=False)
        seq = self.norm(seq + attended)
        profile = [emb(users.profile[:, i]) for i, emb in enumerate(self.profile)]
        return self.mlp(torch.cat([*profile, seq.mean(dim=1)], dim=-1)), seq
