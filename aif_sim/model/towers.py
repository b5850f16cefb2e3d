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
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ItemEmbedding(nn.Module):
    """Embeds an item's categorical features and projects its multi-modal embedding: [...] -> [..., dim].

    The model is `out(cat(category, brand, price, pop embeddings, mm(mm)))`. Since `out` and `mm` are linear,
    the forward projects the small embedding tables through `out` first and folds `out ∘ mm` into one matrix:
    per item, one gather-sum of four dim-vectors and an mm_dim x dim product instead of a concatenation and
    two products. Same function, same parameters, less work per item. Outside autograd the folded weights
    are computed once and reused until a parameter changes (as a server folds them when it loads a model).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.category = nn.Embedding(cfg.n_categories, FIELD_DIM)
        self.brand = nn.Embedding(cfg.n_brands, FIELD_DIM)
        self.price = nn.Embedding(cfg.n_price_buckets, FIELD_DIM)
        self.pop = nn.Embedding(cfg.n_pop_buckets, FIELD_DIM)
        self.mm = nn.Linear(cfg.mm_dim, FIELD_DIM)
        self.out = nn.Linear(5 * FIELD_DIM, cfg.dim)
        self._folded: tuple[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] | None = None

    @property
    def fields(self) -> tuple[nn.Embedding, ...]:
        return self.category, self.brand, self.price, self.pop

    def forward(self, items: ItemInputs) -> Tensor:
        tables, offsets, mm_weight, bias = self.folded()
        ids = torch.stack([items.category, items.brand, items.price, items.pop], dim=-1) + offsets
        summed = nn.functional.embedding_bag(ids.reshape(-1, len(self.fields)), tables, mode="sum")
        out = torch.addmm(summed.add_(bias), items.mm.reshape(-1, items.mm.shape[-1]), mm_weight)
        return out.reshape(*items.category.shape, -1)

    def folded(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The projected tables (stacked) [sum of vocabularies, dim], each field's row offset, the folded
        mm_dim x dim matrix and the bias; cached outside autograd, keyed by the parameters' storage and version
        (parameters made under inference mode have no version: those are folded on every call)."""
        if torch.is_grad_enabled() or any(p.is_inference() for p in self.parameters()):
            return self._fold()
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, self._fold())
        return self._folded[1]

    def _fold(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        blocks = self.out.weight.split(FIELD_DIM, dim=1)  # the output layer's block for each input field
        tables = torch.cat([emb.weight @ block.T for emb, block in zip(self.fields, blocks)])
        sizes = [emb.num_embeddings for emb in self.fields]
        offsets = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], device=tables.device)
        return tables, offsets, (blocks[-1] @ self.mm.weight).T, self.out.bias + blocks[-1] @ self.mm.bias

    def forward_reference(self, items: ItemInputs) -> Tensor:
        """The same function in its textbook form: concatenate the field embeddings, then the two linear layers."""
        parts = [emb(ids) for emb, ids in zip(self.fields, (items.category, items.brand, items.price, items.pop))]
        return self.out(torch.cat([*parts, self.mm(items.mm)], dim=-1))


class ItemTower(nn.Module):
    """Item vector [..., dim] from item features."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = ItemEmbedding(cfg)
        self.mlp = mlp(cfg.dim, 2 * cfg.dim, cfg.dim)

    def forward(self, items: ItemInputs) -> Tensor:
        return self.mlp(self.embed(items).relu_())


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
