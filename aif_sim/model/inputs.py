"""Model inputs as torch tensors: item features and user features, with any leading shape."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

ITEM_FIELDS = ("category", "brand", "price", "pop")
PROFILE_FIELDS = ("age", "gender", "city", "activity")


@dataclass
class ItemInputs:
    """Categorical item features (long) and the multi-modal embedding `mm` (float, last dim = mm_dim)."""

    category: Tensor
    brand: Tensor
    price: Tensor
    pop: Tensor
    mm: Tensor

    @property
    def shape(self) -> torch.Size:
        return self.category.shape

    def reshape(self, *shape: int) -> ItemInputs:
        """The same items with a new leading shape."""
        return ItemInputs(*(getattr(self, f).reshape(*shape) for f in ITEM_FIELDS), self.mm.reshape(*shape, self.mm.shape[-1]))

    def take(self, index: Tensor) -> ItemInputs:
        """The items at `index` (any shape) along the first dimension."""
        return ItemInputs(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: torch.device | str) -> ItemInputs:
        return ItemInputs(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass
class UserInputs:
    """Profile ids [B, 4], the short behaviour sequence as items [B, Ls], the long one as mm embeddings [B, Ll, mm_dim]."""

    profile: Tensor
    short: ItemInputs
    long_mm: Tensor

    @property
    def batch(self) -> int:
        return self.profile.shape[0]

    def to(self, device: torch.device | str) -> UserInputs:
        return UserInputs(self.profile.to(device), self.short.to(device), self.long_mm.to(device))
