"""Model inputs as torch tensors: item features and user features, with any leading shape."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class ItemInputs:
    """Categorical item features (long) and the multi-modal embedding `mm` (float, last dim = mm_dim)."""

    category: Tensor
    brand: Tensor
    price: Tensor
    pop: Tensor
    mm: Tensor

    def take(self, index: Tensor) -> ItemInputs:
        """The items at `index` (any shape) along the first dimension."""
        return ItemInputs(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: torch.device | str) -> ItemInputs:
        """The same items on another device."""
        return ItemInputs(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass
class UserInputs:
    """Profile ids [B, 4], the short behaviour sequence as items [B, Ls], the long one as mm embeddings [B, Ll, mm_dim]."""

    profile: Tensor
    short: ItemInputs
    long_mm: Tensor

    def to(self, device: torch.device | str) -> UserInputs:
        """The same users on another device."""
        return UserInputs(self.profile.to(device), self.short.to(device), self.long_mm.to(device))
