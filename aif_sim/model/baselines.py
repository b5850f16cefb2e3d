"""Baselines: the sequential pre-ranker that computes everything online, a UIC-style light pre-ranker over a
precomputed user-interest vector, and a two-tower dot product."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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


@dataclass
class _RequestTerms:
    """What the sequential model's serving form computes once per request, before the candidate blocks."""

    short_keys: Tensor  # [dim, Ls]: keys of the short sequence with the query projection and scale folded in
    short_bias: Tensor  # [Ls]: the query bias's share of the attention logits
    short_values: Tensor  # [Ls, dim]
    long_keys: Tensor  # [mm_dim, Ll]: unit long-term embeddings times the temperature
    long_values: Tensor  # [Ll, dim]: projected long-term behaviours
    head_weight: Tensor  # [4 dim + 1, hidden]: the head's first layer over [v, TA, TA ⊙ v, long, mass], user folded in
    head_bias: Tensor  # [hidden]
    log_len: float


class SequentialModel(nn.Module):
    """Online for every candidate: item tower, target attention over the short sequence, and attention over
    the long-term behaviours by exact cosine similarity of multi-modal embeddings (SIM soft search), then an
    MLP over [u, v, u ⊙ v, TA, TA ⊙ v, long, mass].

    `forward_reference` is the textbook form (and the one trained, autograd through it). Outside autograd,
    `forward` runs the serving form (`serve`): the same function computed as a serving engineer would.
    """

    BLOCK = 1024  # candidates per block in `serve`: a block's [block, Ll] logits stay in cache (512 and 2048: 2-5% slower)

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
        return self.forward_reference(users, items) if torch.is_grad_enabled() else self.serve(users, items)

    def forward_reference(self, users: UserInputs, items: ItemInputs) -> Tensor:
        """Logits [B, C], written as the model is defined (all candidates at once, concatenated head input)."""
        user, seq = self.user_tower(users)
        item = self.item_tower(items)
        short = self.short_attention(item, seq)
        cosine = nn.functional.normalize(items.mm, dim=-1) @ nn.functional.normalize(users.long_mm, dim=-1).transpose(1, 2)
        logits = cosine * self.long_temperature
        long = torch.softmax(logits, dim=-1) @ self.long_value(users.long_mm)
        mass = torch.logsumexp(logits, dim=-1, keepdim=True) - math.log(users.long_mm.shape[1])
        user = user[:, None, :].expand_as(item)
        return self.head(torch.cat([user, item, user * item, short, short * item, long, mass], dim=-1)).squeeze(-1)

    def serve(self, users: UserInputs, items: ItemInputs, block: int | None = None) -> Tensor:
        """Logits [B, C] as `forward_reference`, computed for serving (no autograd).

        Per request, once: the user tower, the short sequence's keys (query projection folded in) and values,
        the normalised long-term behaviours (temperature folded in) and their projections, and the head's
        first layer with the user's terms folded in ((u ⊙ v) W = v (W diag u); the u-only term is a bias).
        Per block of candidates: the item tower, one pass of the softmax over the long-term behaviours
        (shift by the row max, exponentiate in place, sum: the pooled values are the product with the values
        over that sum, the log-sum-exp is the max plus its log), and the head on a [block, 4 dim + 1] input.
        """
        user, seq = self.user_tower(users)
        n_cand = items.category.shape[1]
        block = block or self.BLOCK
        out = items.mm.new_empty(items.category.shape)
        logits = items.mm.new_empty(min(block, n_cand), users.long_mm.shape[1])  # reused by every block: no allocation per block
        for b in range(len(user)):
            terms = self._request_terms(user[b], seq[b], users.long_mm[b])
            for start in range(0, n_cand, block):
                rows = slice(start, min(start + block, n_cand))
                cand = ItemInputs(
                    items.category[b, rows], items.brand[b, rows], items.price[b, rows], items.pop[b, rows], items.mm[b, rows]
                )
                out[b, rows] = self._score_block(terms, cand, logits[: rows.stop - rows.start])
        return out

    def _request_terms(self, user: Tensor, seq: Tensor, long_mm: Tensor) -> _RequestTerms:
        d = self.cfg.dim
        ta = self.short_attention
        keys = ta.key(seq)
        w = self.head[0].weight  # [hidden, 6 dim + 1]: columns u, v, u ⊙ v, TA, TA ⊙ v, long, mass
        w_user, w_item, w_cross, w_rest = w[:, :d], w[:, d : 2 * d], w[:, 2 * d : 3 * d], w[:, 3 * d :]
        return _RequestTerms(
            short_keys=((keys @ ta.query.weight) * ta.scale).T.contiguous(),
            short_bias=(keys @ ta.query.bias) * ta.scale,
            short_values=ta.value(seq),
            long_keys=(nn.functional.normalize(long_mm, dim=-1) * self.long_temperature).T.contiguous(),
            long_values=self.long_value(long_mm),
            head_weight=torch.cat([w_item + w_cross * user, w_rest], dim=1).T.contiguous(),
            head_bias=self.head[0].bias + w_user @ user,
            log_len=math.log(len(long_mm)),
        )

    def _score_block(self, terms: _RequestTerms, cand: ItemInputs, logits: Tensor) -> Tensor:
        d = self.cfg.dim
        item = self.item_tower(cand)
        x = item.new_empty(len(item), 4 * d + 1)
        x[:, :d] = item
        attention = torch.addmm(terms.short_bias, item, terms.short_keys).softmax(dim=-1)
        x[:, d : 2 * d] = attention @ terms.short_values
        torch.mul(x[:, d : 2 * d], item, out=x[:, 2 * d : 3 * d])
        torch.mm(nn.functional.normalize(cand.mm, dim=-1), terms.long_keys, out=logits)  # [block, Ll]
        peak = logits.amax(dim=-1, keepdim=True)
        weights = _exp_(logits.sub_(peak))
        total = weights.sum(dim=-1, keepdim=True)  # the softmax's normaliser (cheaper than a ones column in the product)
        torch.div(weights @ terms.long_values, total, out=x[:, 3 * d : 4 * d])
        x[:, 4 * d :] = peak + total.log() - terms.log_len
        hidden = torch.addmm(terms.head_bias, x, terms.head_weight).relu_()
        return self.head[4](self.head[2](hidden).relu_()).squeeze(-1)


def _exp_(x: Tensor) -> Tensor:
    """exp in place; on CPU through numpy, whose vectorised float32 exp is about twice as fast as torch's."""
    if x.device.type == "cpu":
        np.exp(x.numpy(), out=x.numpy())
        return x
    return x.exp_()


class LightPrerankModel(nn.Module):
    """UIC-style pre-ranker: the user-interest vector is computed off the request path (on behaviour events,
    by the user tower) and stored; online, a light MLP scores each candidate from its features and that vector.

    The online part (`online`): the item tower over the candidate's features, then an MLP over [u, v, u ⊙ v]
    whose first layer has the user folded in ((u ⊙ v) W = v (W diag u); the u-only term is a bias). It can
    represent the two-tower dot product and more, with no cross feature between the candidate and the behaviours.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.user_tower = UserTower(cfg)
        self.item_tower = ItemTower(cfg)
        self.head = mlp(3 * cfg.dim, cfg.rtp_hidden, cfg.rtp_hidden // 2, 1)

    BLOCK = 4096  # candidates per block in `online` outside autograd (2048: 5% slower, unblocked: 2x at 10^4)

    def forward(self, users: UserInputs, items: ItemInputs) -> Tensor:
        """Logits [B, C] for candidates items [B, C]."""
        return self.online(self.user_tower(users)[0], items)

    def online(self, user: Tensor, items: ItemInputs, block: int | None = None) -> Tensor:
        """Logits [B, C] from precomputed user-interest vectors [B, dim] and the candidates' features [B, C]; outside
        autograd in blocks of candidates (as the AIF real time), so the temporaries stay in cache."""
        d = self.cfg.dim
        w = self.head[0].weight  # [hidden, 3 dim]: columns u, v, u ⊙ v
        weight = (w[:, d : 2 * d] + w[:, 2 * d :] * user[:, None, :]).transpose(1, 2)  # [B, dim, hidden]
        bias = self.head[0].bias + user @ w[:, :d].T  # [B, hidden]
        first, last = self.head[2], self.head[4]
        if torch.is_grad_enabled():
            hidden = torch.baddbmm(bias[:, None, :], self.item_tower(items), weight).relu_()
            return last(first(hidden).relu_()).squeeze(-1)
        n_cand = items.category.shape[1]
        block = block or self.BLOCK
        out = items.mm.new_empty(items.category.shape)
        for b in range(len(user)):
            for start in range(0, n_cand, block):
                rows = slice(start, min(start + block, n_cand))
                cand = ItemInputs(
                    items.category[b, rows], items.brand[b, rows], items.price[b, rows], items.pop[b, rows], items.mm[b, rows]
                )
                hidden = torch.addmm(bias[b], self.item_tower(cand), weight[b]).relu_()
                out[b, rows] = last(first(hidden).relu_()).squeeze(-1)
        return out


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
