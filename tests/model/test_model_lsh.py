"""Signature packing and XOR-popcount Hamming distances against plain numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aif_sim.model.lsh import LSHSim, count_within, hamming_numpy, hamming_torch, pack_bits_numpy, pack_bits_torch, radius_counts_cpu


def reference_hamming(bits_a: np.ndarray, bits_b: np.ndarray) -> np.ndarray:
    return (bits_a[:, None, :] != bits_b[None, :, :]).sum(-1)


@pytest.mark.parametrize("n_bits", [64, 128, 192])
@pytest.mark.parametrize("pack", [pack_bits_numpy, pack_bits_torch])
@pytest.mark.parametrize("distance", [hamming_numpy, hamming_torch])
def test_packed_xor_popcount_equals_reference(n_bits, pack, distance):
    rng = np.random.default_rng(n_bits)
    a, b = rng.random((37, n_bits)) < 0.5, rng.random((53, n_bits)) < 0.3
    got = distance(pack(torch.from_numpy(a)), pack(torch.from_numpy(b)))
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), reference_hamming(a, b))


def test_packing_puts_bit_k_of_word_w_at_position_64w_plus_k():
    bits = torch.zeros(1, 128, dtype=torch.bool)
    bits[0, 3] = bits[0, 64 + 63] = True
    words = pack_bits_numpy(bits)
    assert words[0, 0].item() == 1 << 3
    assert words[0, 1].item() == -(1 << 63)  # the top bit is the sign bit of int64
    torch.testing.assert_close(words, pack_bits_torch(bits))


@pytest.mark.parametrize("mode", ["bit1", "bit2"])
def test_signature_hamming_matches_unpacked_codes(mode):
    lsh = LSHSim(mm_dim=16, mode=mode, planes=64, radii=(0.1, 0.2), seed=3)
    x = torch.randn(20, 16)
    proj = (x @ lsh.planes.T).numpy()
    bits = proj > 0
    if mode == "bit2":
        magnitude = np.abs(proj) > 0.6745 * np.linalg.norm(x.numpy(), axis=1, keepdims=True)
        bits = np.stack([bits, magnitude], axis=-1).reshape(20, -1)
    codes = lsh.encode(x)
    np.testing.assert_array_equal(lsh.similarity(codes, codes).numpy(), reference_hamming(bits, bits))


def test_one_bit_hamming_estimates_the_angle():
    lsh = LSHSim(mm_dim=32, mode="bit1", planes=64 * 16, radii=(0.1,), seed=0)
    x = torch.nn.functional.normalize(torch.randn(200, 32), dim=-1)
    angle = torch.arccos((x @ x.T).clamp(-1, 1)) / math.pi
    estimate = lsh.similarity(lsh.encode(x), lsh.encode(x)).float() / (64 * 16)
    assert (estimate - angle).abs().mean() < 0.02


def test_counts_within_radii_and_dense_counts_agree_with_brute_force():
    rng = np.random.default_rng(0)
    sim = torch.from_numpy(rng.integers(0, 65, (300, 40)).astype(np.uint8))
    radii = torch.tensor([5, 20, 40], dtype=torch.uint8)
    expected = (sim.numpy()[:, :, None] <= radii.numpy()).sum(1)
    np.testing.assert_array_equal(count_within(sim, radii, closer_is_smaller=True).numpy(), expected)
    cos = torch.rand(300, 40)
    thresholds = torch.tensor([0.5, 0.9])
    np.testing.assert_array_equal(count_within(cos, thresholds, False).numpy(), (cos.numpy()[:, :, None] >= thresholds.numpy()).sum(1))


def test_features_are_chunk_independent():
    lsh = LSHSim(mm_dim=16, mode="bit2", planes=32, radii=(0.1, 0.2, 0.3), seed=1)
    cand, beh = lsh.encode(torch.randn(2, 700, 16)), lsh.encode(torch.randn(2, 90, 16))
    whole = torch.stack([count_within(lsh.similarity(c, b), lsh.thresholds, True) for c, b in zip(cand, beh)])
    torch.testing.assert_close(lsh.features(cand, beh), torch.log1p(whole.float()))


@pytest.mark.parametrize("words", [1, 2, 3])
def test_fused_radius_counts_equal_brute_force_hamming(words):
    """The compiled CPU kernel counts exactly the behaviours within each radius of an unpacked-bit reference."""
    rng = np.random.default_rng(words)
    bits_c = rng.integers(0, 2, (257, words * 64)).astype(bool)
    bits_b = rng.integers(0, 2, (131, words * 64)).astype(bool)
    bits_b[:40] = bits_c[:40] ^ (rng.random((40, words * 64)) < 0.1)  # near neighbours, so small radii count
    cand, beh = pack_bits_numpy(torch.from_numpy(bits_c)), pack_bits_numpy(torch.from_numpy(bits_b))
    thresholds = torch.tensor([0, 3 * words, 8 * words, 32 * words, 64 * words], dtype=torch.uint8)
    expected = (reference_hamming(bits_c, bits_b)[:, :, None] <= thresholds.numpy()).sum(1)
    np.testing.assert_array_equal(radius_counts_cpu(cand, beh, thresholds).numpy(), expected)
    assert radius_counts_cpu(cand[:0], beh, thresholds).shape == (0, len(thresholds))
