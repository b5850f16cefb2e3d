"""LSH-SIM: random-hyperplane signatures of multi-modal embeddings packed into uint64 words.

Similarity between a candidate and a long-term behaviour is the Hamming distance of their signatures
(XOR + popcount). Each candidate is summarised by how many of the user's long-term behaviours lie within
a few Hamming radii of it (log1p counts): a similarity-weighted pooling over the long-term behaviours whose
weights per similarity level the real-time head learns. The `dense` mode computes the same counts from
exact cosine similarities (the reference that LSH approximates).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit
from torch import Tensor, nn

from aif_sim.model.config import LSHMode

WORD_BITS = 64
MAGNITUDE_QUANTILE = 0.6745  # |N(0,1)| median: the 2-bit code's magnitude bit splits projections in half
CPU_CHUNK = 1024  # candidates per block on CPU (dense mode), so the [block, L] similarities stay in cache
_BYTE_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)


def pack_bits(bits: Tensor) -> Tensor:
    """Pack a bool tensor [..., n*64] into int64 words [..., n] (bit k of word w = bits[..., 64*w + k])."""
    if bits.shape[-1] % WORD_BITS:
        raise ValueError(f"bit count {bits.shape[-1]} is not a multiple of {WORD_BITS}")
    return pack_bits_numpy(bits) if bits.device.type == "cpu" else pack_bits_torch(bits)


def pack_bits_numpy(bits: Tensor) -> Tensor:
    """pack_bits on CPU with numpy (assumes little-endian words, as on x86 and ARM)."""
    return torch.from_numpy(np.packbits(bits.numpy(), axis=-1, bitorder="little").view(np.int64))


def pack_bits_torch(bits: Tensor) -> Tensor:
    """pack_bits with torch integer ops, on any device."""
    *lead, n = bits.shape
    halves = bits.reshape(*lead, n // WORD_BITS, 2, 32).long()
    weights = torch.ones(32, dtype=torch.long, device=bits.device) << torch.arange(32, device=bits.device)
    lo, hi = (halves * weights).sum(-1).unbind(-1)
    return lo | (hi << 32)


def hamming(a: Tensor, b: Tensor) -> Tensor:
    """Hamming distances [C, L] between packed signatures a [C, W] and b [L, W], by XOR + popcount
    (uint8 up to 3 words, int16 beyond)."""
    return hamming_numpy(a, b) if a.device.type == "cpu" else hamming_torch(a, b)


def hamming_numpy(a: Tensor, b: Tensor) -> Tensor:
    """hamming on CPU: XOR in torch (vectorised), popcount with numpy's np.bitwise_count, word by word."""
    out = np.empty((a.shape[0], b.shape[0]), dtype=_distance_dtype(a.shape[1]))
    for w in range(a.shape[1]):
        xor = torch.bitwise_xor(a[:, None, w], b[None, :, w]).numpy().view(np.uint64)
        if w == 0:
            np.bitwise_count(xor, out=out)
        else:
            out += np.bitwise_count(xor)
    return torch.from_numpy(out)


def hamming_torch(a: Tensor, b: Tensor) -> Tensor:
    """hamming with torch on any device (torch has no popcount: XOR, then a byte lookup table)."""
    x = (a[:, None, :] ^ b[None, :, :]).contiguous().view(torch.uint8)
    dtype = torch.uint8 if _distance_dtype(a.shape[1]) == np.uint8 else torch.int16
    return _BYTE_POPCOUNT.to(a.device)[x.long()].sum(-1, dtype=dtype)


def _distance_dtype(n_words: int) -> type:
    return np.uint8 if n_words * WORD_BITS <= 255 else np.int16


@njit(cache=True, nogil=True, inline="always")
def _popcount(x: np.uint64) -> np.uint64:  # pragma: no cover (compiled)
    """Bit count of a 64-bit word (LLVM recognises the pattern and emits popcnt)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True, nogil=True)
def _radius_counts(
    cand: np.ndarray, beh_t: np.ndarray, thresholds: np.ndarray, out: np.ndarray, dist: np.ndarray
) -> None:  # pragma: no cover (compiled)
    """Counts out[c, q] of behaviours within thresholds[q] of candidate c, in one compiled loop per candidate.

    cand [C, W] and the word-major behaviours beh_t [W, L] are uint64 signatures; thresholds come in groups
    of four (padded by the caller) and have the dtype of the distance buffer dist [L] (uint8 up to 255 bits).
    Per candidate, one pass writes the L Hamming distances (XOR + popcount, vectorised: AVX-512 has a vector
    popcount) and one pass compares them with four thresholds at once into four independent accumulators
    (vectorised compares and adds); neither pass has a lookup or a loop-carried dependency the compiler cannot
    split, and the L distances stay in L1.
    """
    n_cand, n_words = cand.shape
    n_beh = beh_t.shape[1]
    for c in range(n_cand):
        word = cand[c, 0]
        row = beh_t[0]
        for j in range(n_beh):
            dist[j] = _popcount(word ^ row[j])
        for w in range(1, n_words):
            word = cand[c, w]
            row = beh_t[w]
            for j in range(n_beh):
                dist[j] += _popcount(word ^ row[j])
        for q in range(0, thresholds.shape[0], 4):
            t0, t1, t2, t3 = thresholds[q], thresholds[q + 1], thresholds[q + 2], thresholds[q + 3]
            a0 = a1 = a2 = a3 = np.int32(0)
            for j in range(n_beh):
                d = dist[j]
                a0 += np.int32(d <= t0)
                a1 += np.int32(d <= t1)
                a2 += np.int32(d <= t2)
                a3 += np.int32(d <= t3)
            out[c, q], out[c, q + 1], out[c, q + 2], out[c, q + 3] = a0, a1, a2, a3


def radius_counts_cpu(cand: Tensor, beh: Tensor, thresholds: Tensor) -> Tensor:
    """Counts [C, K] of behaviours [L, W] within each Hamming threshold of candidates [C, W] (CPU, compiled)."""
    n_thr = len(thresholds)
    if n_thr == 0:
        return torch.zeros(len(cand), 0, dtype=torch.int32)
    dtype = _distance_dtype(cand.shape[1])
    padded = np.empty(-(-n_thr // 4) * 4, dtype=dtype)  # groups of four; padding repeats the last threshold
    padded[:n_thr] = thresholds.numpy()
    padded[n_thr:] = padded[n_thr - 1]
    out = np.empty((len(cand), len(padded)), dtype=np.int32)
    words = lambda t: np.ascontiguousarray(t.numpy()).view(np.uint64)  # noqa: E731
    _radius_counts(words(cand), np.ascontiguousarray(words(beh).T), padded, out, np.empty(len(beh), dtype=dtype))
    return torch.from_numpy(out[:, :n_thr])


def count_within(sim: Tensor, thresholds: Tensor, closer_is_smaller: bool) -> Tensor:
    """Counts [C, K] of entries of each row of sim [C, L] at or beyond each threshold (<= for distances, >= for similarities)."""
    if sim.device.type == "cpu":
        n_thr = len(thresholds)
        padded = np.empty(-(-n_thr // 4) * 4, dtype=sim.numpy().dtype)  # groups of four, as in _radius_counts
        padded[:n_thr] = thresholds.numpy()
        padded[n_thr:] = padded[n_thr - 1] if n_thr else 0
        out = np.empty((len(sim), len(padded)), dtype=np.int32)
        (_count_at_most if closer_is_smaller else _count_at_least)(np.ascontiguousarray(sim.numpy()), padded, out)
        return torch.from_numpy(out[:, :n_thr])
    hit = sim[..., None] <= thresholds if closer_is_smaller else sim[..., None] >= thresholds
    return hit.sum(-2, dtype=torch.int32)


@njit(cache=True, nogil=True)
def _count_at_most(sim: np.ndarray, thresholds: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """out[c, q] = number of entries of sim[c] <= thresholds[q]; thresholds in groups of four, one vectorised pass per group."""
    for c in range(sim.shape[0]):
        row = sim[c]
        for q in range(0, thresholds.shape[0], 4):
            t0, t1, t2, t3 = thresholds[q], thresholds[q + 1], thresholds[q + 2], thresholds[q + 3]
            a0 = a1 = a2 = a3 = np.int32(0)
            for j in range(row.shape[0]):
                x = row[j]
                a0 += np.int32(x <= t0)
                a1 += np.int32(x <= t1)
                a2 += np.int32(x <= t2)
                a3 += np.int32(x <= t3)
            out[c, q], out[c, q + 1], out[c, q + 2], out[c, q + 3] = a0, a1, a2, a3


@njit(cache=True, nogil=True)
def _count_at_least(sim: np.ndarray, thresholds: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """out[c, q] = number of entries of sim[c] >= thresholds[q]; as _count_at_most."""
    for c in range(sim.shape[0]):
        row = sim[c]
        for q in range(0, thresholds.shape[0], 4):
            t0, t1, t2, t3 = thresholds[q], thresholds[q + 1], thresholds[q + 2], thresholds[q + 3]
            a0 = a1 = a2 = a3 = np.int32(0)
            for j in range(row.shape[0]):
                x = row[j]
                a0 += np.int32(x >= t0)
                a1 += np.int32(x >= t1)
                a2 += np.int32(x >= t2)
                a3 += np.int32(x >= t3)
            out[c, q], out[c, q + 1], out[c, q + 2], out[c, q + 3] = a0, a1, a2, a3


class LSHSim(nn.Module):
    """Signature encoder and similarity features for one of the modes bit1 (sign), bit2 (sign + magnitude) or dense.
    Radii are fractions of the signature's bits (bit modes) or the angles pi * r (dense)."""

    def __init__(self, mm_dim: int, mode: LSHMode, planes: int, radii: tuple[float, ...], seed: int) -> None:
        super().__init__()
        if mode not in ("bit1", "bit2", "dense"):
            raise ValueError(f"unknown LSH mode {mode!r}")
        self.mode = mode
        bits = planes * (2 if mode == "bit2" else 1)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("planes", torch.randn(planes, mm_dim, generator=gen))
        if mode == "dense":
            thresholds = torch.tensor([math.cos(math.pi * r) for r in radii])
        else:
            thresholds = torch.tensor([math.floor(r * bits) for r in radii], dtype=torch.uint8)
        self.register_buffer("thresholds", thresholds)

    @property
    def n_features(self) -> int:
        return len(self.thresholds)

    def encode(self, mm: Tensor) -> Tensor:
        """Codes of embeddings [..., mm_dim]: int64 words [..., W], or unit vectors in dense mode."""
        if self.mode == "dense":
            return nn.functional.normalize(mm, dim=-1)
        proj = mm @ self.planes.T
        bits = proj > 0
        if self.mode == "bit2":
            magnitude = proj.abs() > MAGNITUDE_QUANTILE * mm.norm(dim=-1, keepdim=True)
            bits = torch.stack([bits, magnitude], dim=-1).flatten(-2)
        return pack_bits(bits)

    def similarity(self, cand: Tensor, beh: Tensor) -> Tensor:
        """Pairwise similarity [C, L] of candidate codes [C, .] and behaviour codes [L, .]: Hamming or cosine."""
        return hamming(cand, beh) if self.mode != "dense" else cand @ beh.T

    def features(self, cand: Tensor, beh: Tensor) -> Tensor:
        """log1p counts [B, C, K] of behaviours [B, L, .] within each radius of each candidate [B, C, .]."""
        return torch.log1p(torch.stack([self.counts(c, b) for c, b in zip(cand, beh)]).float())

    def counts(self, cand: Tensor, beh: Tensor) -> Tensor:
        """Counts [C, K] of behaviours [L, .] within each radius of each candidate [C, .]."""
        if self.mode != "dense" and cand.device.type == "cpu":
            return radius_counts_cpu(cand, beh, self.thresholds)
        rows = CPU_CHUNK if cand.device.type == "cpu" else max(len(cand), 1)
        if self.mode == "dense":
            beh_t = beh.T.contiguous()  # once per user: a product with a transposed view takes twice as long in MKL
            buffer = cand.new_empty(min(rows, len(cand)), len(beh))  # reused by every block: no allocation per block
            similarity = lambda block: torch.mm(block, beh_t, out=buffer[: len(block)])  # noqa: E731
        else:
            similarity = lambda block: hamming(block, beh)  # noqa: E731
        blocks = [
            count_within(similarity(cand[i : i + rows]), self.thresholds, closer_is_smaller=self.mode != "dense")
            for i in range(0, len(cand), rows)
        ]
        return torch.cat(blocks) if blocks else torch.zeros(0, self.n_features, dtype=torch.int32)
