"""The AIF pre-ranking model, split where AIF runs each part.

- `user_side(users)`: user tower, user-bridge representations (BEA), LSH signatures of the long-term
  behaviours and the user's share of the real-time head's first layer; runs in parallel with retrieval.
- `item_side(items)`: item tower, item-bridge weights, the item's LSH signature and its share of the
  first layer; runs nearline and is stored per item.
- `realtime(user_state, item_states)`: BEA combination, LSH-SIM (XOR + popcount) and the real-time head (RTP).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from aif_sim.model.bea import BridgeAttention
from aif_sim.model.config import ModelConfig
from aif_sim.model.inputs import ItemInputs, UserInputs
from aif_sim.model.lsh import LSHSim
from aif_sim.model.towers import ItemTower, UserTower, mlp


@dataclass
class UserState:
    """User-side results for B users."""

    vec: Tensor  # [B, dim]
    rtp: Tensor  # [B, hidden]: the user's term of the head's first layer
    bridges: Tensor  # [B, n, dim]
    long_codes: Tensor  # [B, Ll, W] signatures (or unit vectors in dense mode)


@dataclass
class ItemState:
    """Item-side results (the nearline item vector) for items of any leading shape."""

    vec: Tensor  # [..., dim]
    rtp: Tensor  # [..., hidden]
    bridge_weights: Tensor  # [..., n]
    code: Tensor  # [..., W] signature (or unit vector in dense mode)

    def take(self, index: Tensor) -> ItemState:
        """The states of items at `index` (any shape) along the first dimension."""
        return ItemState(*(getattr(self, f.name)[index] for f in fields(self)))


class AIFModel(nn.Module):
    """User tower + item tower + BEA + LSH-SIM + real-time head."""

    BLOCK = 2048  # candidates per block in `serve_realtime` (2048-10000 measured alike; 1024 is 10% slower, 512 25%)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.user_tower = UserTower(cfg)
        self.item_tower = ItemTower(cfg)
        self.bea = BridgeAttention(cfg.n_bridges, cfg.dim) if cfg.n_bridges > 0 else None
        self.lsh = LSHSim(cfg.mm_dim, cfg.lsh_mode, cfg.lsh_planes, cfg.lsh_radii, cfg.lsh_seed)
        n_cross = (3 if self.bea is not None else 1) * cfg.dim + self.lsh.n_features
        self.rtp_user = nn.Linear(cfg.dim, cfg.rtp_hidden)
        self.rtp_item = nn.Linear(cfg.dim, cfg.rtp_hidden, bias=False)
        self.rtp_cross = nn.Linear(n_cross, cfg.rtp_hidden, bias=False)
        self.rtp_head = mlp(cfg.rtp_hidden, cfg.rtp_hidden // 2, 1)

    def user_side(self, users: UserInputs) -> UserState:
        vec, seq = self.user_tower(users)
        bridges = self.bea.user_part(seq) if self.bea is not None else seq.new_zeros(seq.shape[0], 0, seq.shape[2])
        return UserState(vec, self.rtp_user(vec), bridges, self.lsh.encode(users.long_mm))

    def item_side(self, items: ItemInputs) -> ItemState:
        vec = self.item_tower(items)
        weights = self.bea.item_part(vec) if self.bea is not None else vec.new_zeros(*vec.shape[:-1], 0)
        return ItemState(vec, self.rtp_item(vec), weights, self.lsh.encode(items.mm))

    def realtime(self, user: UserState, items: ItemState) -> Tensor:
        """Logits [B, C] of B users against their candidates' stored states [B, C]: the textbook form under
        autograd (training), the serving form (`serve_realtime`) otherwise."""
        return self.realtime_reference(user, items) if torch.is_grad_enabled() else self.serve_realtime(user, items)

    def realtime_reference(self, user: UserState, items: ItemState) -> Tensor:
        """The real-time head as the model defines it: `rtp_cross` over [u ⊙ v, BEA, BEA ⊙ v, LSH counts] plus the
        user's and the item's stored terms of the first layer, then the MLP."""
        cross = [user.vec[:, None, :] * items.vec]
        if self.bea is not None:
            interest = BridgeAttention.combine(items.bridge_weights, user.bridges)
            cross += [interest, interest * items.vec]
        cross.append(self.lsh.features(items.code, user.long_codes))
        hidden = torch.relu(user.rtp[:, None, :] + items.rtp + self.rtp_cross(torch.cat(cross, dim=-1)))
        return self.rtp_head(hidden).squeeze(-1)

    def serve_realtime(self, user: UserState, items: ItemState, block: int | None = None) -> Tensor:
        """Logits [B, C] as `realtime_reference`, computed for serving (no autograd).

        Per user, once: the cross layer with the user folded in (`cross_weight`). Per block of candidates (so
        the temporaries stay in cache): the LSH counts (compiled XOR + popcount on CPU), the input
        [v, BEA ⊙ v, w_i, LSH counts] (BEA = w_i @ R_u), one product with the folded layer added to the
        stored item term and the user term, and the MLP, in place.
        """
        d, n_bridges = self.cfg.dim, items.bridge_weights.shape[-1]
        n_cand = items.vec.shape[1]
        block = block or self.BLOCK
        out = items.vec.new_empty(items.vec.shape[:2])
        first, _, last = self.rtp_head
        for b in range(len(user.vec)):
            weight = self.cross_weight(user, b)
            for start in range(0, n_cand, block):
                rows = slice(start, min(start + block, n_cand))
                vec = items.vec[b, rows]
                x = vec.new_empty(len(vec), len(weight))
                x[:, :d] = vec
                if self.bea is not None:
                    torch.mm(items.bridge_weights[b, rows], user.bridges[b], out=x[:, d : 2 * d])
                    x[:, d : 2 * d].mul_(vec)
                    x[:, 2 * d : 2 * d + n_bridges] = items.bridge_weights[b, rows]
                x[:, len(weight) - self.lsh.n_features :] = self.lsh.features(items.code[b : b + 1, rows], user.long_codes[b : b + 1])[0]
                hidden = torch.addmm(items.rtp[b, rows], x, weight).add_(user.rtp[b]).relu_()
                out[b, rows] = last(first(hidden).relu_()).squeeze(-1)
        return out

    def cross_weight(self, user: UserState, b: int) -> Tensor:
        """`rtp_cross` with user b folded in, [2·dim + n + K, hidden] (dim + K without BEA), rows in the order of
        the serving input [v, BEA ⊙ v, w_i, LSH counts]: (u ⊙ v) W_1ᵀ = v (W_1 diag u)ᵀ, BEA W_2ᵀ = w_i (R_u W_2ᵀ)."""
        d = self.cfg.dim
        w = self.rtp_cross.weight  # [hidden, n_cross]: columns u ⊙ v, BEA, BEA ⊙ v, LSH counts
        by_vec, by_counts = (w[:, :d] * user.vec[b]).T, w[:, -self.lsh.n_features :].T
        if self.bea is None:
            return torch.cat([by_vec, by_counts])
        return torch.cat([by_vec, w[:, 2 * d : 3 * d].T, user.bridges[b] @ w[:, d : 2 * d].T, by_counts])

    def forward(self, users: UserInputs, items: ItemInputs) -> Tensor:
        """Fused forward: logits [B, C] for candidates items [B, C]."""
        return self.realtime(self.user_side(users), self.item_side(items))
