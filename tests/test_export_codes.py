"""Scheme codes (encode/decode/lattice) and bit packing: the packed format's exactness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitsmith.export.bitpack import (
    bitmask_nbytes,
    decode_index,
    decode_mask,
    encode_index,
    encode_mask,
    pack_bits,
    packed_nbytes,
    unpack_bits,
)
from bitsmith.policy import QSpec
from bitsmith.schemes import available, get_scheme
from bitsmith.schemes.base import reduce_dims


def _cases() -> list:
    cases = []
    for name in available():
        s = get_scheme(name)
        for bits in range(s.min_bits, min(s.max_bits, 8) + 1):
            for axis in (None, 0, 1):
                cases.append(pytest.param(name, bits, axis, id=f"{name}-{bits}-{axis}"))
    return cases


def _params(name: str, x: torch.Tensor, bits: int, axis: int | None, **kw) -> dict:
    s = get_scheme(name)
    if s.range_based:
        dims = reduce_dims(x, axis)
        spec = QSpec(name, bits, "tensor" if axis is None else "channel", **kw)
        return s.params_from_range(x.amin(dims, keepdim=True) * 0.7,
                                   x.amax(dims, keepdim=True) * 0.7, bits, spec)
    return s.params_from_data(x, bits, axis)


def _weight() -> torch.Tensor:
    x = torch.randn(12, 7, 3, 3) * torch.linspace(0.05, 2.0, 12).view(-1, 1, 1, 1)
    x[0, :2] = 0.0  # exact zeros (pruned weights, sign(0))
    return x


@pytest.mark.parametrize("name, bits, axis", _cases())
def test_decode_of_encode_is_quantize_bit_for_bit(name, bits, axis):
    s = get_scheme(name)
    x = _weight()
    p = _params(name, x, bits, axis)
    codes = s.encode(x, p, bits)
    assert codes.dtype == torch.int64 and codes.shape == x.shape
    assert int(codes.min()) >= 0 and int(codes.max()) < 2 ** bits
    assert torch.equal(s.decode(codes, p, bits), s.quantize(x, p, bits))
    assert len(s.stored_params(bits)) == s.float_params_for(bits)
    assert set(s.stored_params(bits)) <= set(p)


@pytest.mark.parametrize("name, bits, axis", _cases())
def test_lattice_holds_every_level_exactly(name, bits, axis):
    s = get_scheme(name)
    x = _weight()
    p = _params(name, x, bits, axis)
    lattice = s.lattice(p, bits)
    if lattice is None:
        assert not s.integer_grid and name in ("resq", "mu_l2q", "zoomq", "pot")
        return
    scale, zp, qmin, qmax = lattice
    x_hat = s.quantize(x, p, bits)
    q = torch.round(x_hat / scale) + zp
    assert torch.equal((q - zp) * scale, x_hat)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax


def test_pot_lattice_only_up_to_4_bits():
    s = get_scheme("pot")
    p = {"alpha": torch.tensor(1.0)}
    assert s.lattice(p, 4) is not None and s.lattice(p, 5) is None


def test_reduced_range_and_asymmetric_codes_fit():
    x = _weight()
    for name in ("uniform_symmetric", "uniform_asymmetric", "fixed_point", "clipq"):
        s = get_scheme(name)
        p = _params(name, x, 4, 0, reduced_range=True)
        codes = s.encode(x, p, 4)
        assert int(codes.max()) < 2 ** 3 + (2 ** 3 if not s.symmetric else 0)
        assert torch.equal(s.decode(codes, p, 4), s.quantize(x, p, 4))


def test_data_driven_schemes_refuse_default_codes():
    from bitsmith.schemes.base import Scheme

    class Plain(Scheme):
        name = "plain_for_test"

        def quantize(self, x, params, bits):
            return x

    with pytest.raises(NotImplementedError):
        Plain().encode(torch.zeros(2), {}, 2)
    with pytest.raises(NotImplementedError):
        Plain().decode(torch.zeros(2, dtype=torch.int64), {}, 2)
    with pytest.raises(NotImplementedError):
        Plain().stored_params(2)
    assert Plain().lattice({}, 2) is None


@pytest.mark.parametrize("bits", list(range(1, 17)))
def test_pack_unpack_round_trip_and_size(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2 ** bits, 1003)
    data = pack_bits(codes, bits)
    assert data.dtype == np.uint8 and data.size == packed_nbytes(1003, bits) == -(-1003 * bits // 8)
    assert np.array_equal(unpack_bits(data, bits, 1003), codes)


def test_pack_rejects_out_of_range_and_bad_lengths():
    with pytest.raises(ValueError, match="codes must lie"):
        pack_bits(np.array([4]), 2)
    with pytest.raises(ValueError, match="bits must be"):
        pack_bits(np.array([0]), 17)
    with pytest.raises(ValueError, match="expected 2 bytes"):
        unpack_bits(np.zeros(3, np.uint8), 4, 4)


@pytest.mark.parametrize("keep_fraction", [0.002, 0.05, 0.3, 0.7, 1.0])
def test_mask_picks_the_cheaper_encoding_and_round_trips(keep_fraction):
    rng = np.random.default_rng(0)
    keep = rng.random(4096) < keep_fraction
    kind, k, data = encode_mask(keep)
    assert data.size <= bitmask_nbytes(keep.size)
    if keep_fraction >= 0.7:
        assert kind == "bitmask"
    if keep_fraction <= 0.05:
        assert kind == "index" and data.size < bitmask_nbytes(keep.size)
    assert np.array_equal(decode_mask(kind, k, data, keep.size, int(keep.sum())), keep)


def test_relative_index_escapes_long_gaps():
    positions = np.array([0, 1, 300, 301, 5000])
    for k in (1, 2, 4, 8):
        assert np.array_equal(decode_index(encode_index(positions, k), k, 5), positions)
    with pytest.raises(ValueError, match="fewer survivors"):
        decode_index(encode_index(positions, 8), 8, 6)
    with pytest.raises(ValueError, match="unknown mask"):
        decode_mask("rle", 0, np.zeros(1, np.uint8), 8, 1)
