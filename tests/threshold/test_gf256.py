"""The field arithmetic against an independent reference: log/antilog tables of the generator 3."""

from __future__ import annotations

from threshold.gf256 import inverse, multiply


def _reference_tables() -> tuple[list[int], list[int]]:
    """exp/log tables of GF(2^8) mod 0x11B built from the generator 0x03 (x + 1), as in FIPS-197."""
    exp, log = [0] * 510, [0] * 256
    value = 1
    for power in range(255):
        exp[power] = exp[power + 255] = value
        log[value] = power
        doubled = (value << 1) ^ (0x11B if value & 0x80 else 0)
        value = doubled ^ value  # value · 3 = value · 2 + value
    return exp, log


EXP, LOG = _reference_tables()


def test_fips197_example() -> None:
    # FIPS-197 §4.2: {57} · {83} = {c1}, {57} · {13} = {fe}.
    assert multiply(0x57, 0x83) == 0xC1
    assert multiply(0x57, 0x13) == 0xFE


def test_every_product_matches_the_reference() -> None:
    for a in range(256):
        for b in range(256):
            expected = 0 if a == 0 or b == 0 else EXP[LOG[a] + LOG[b]]
            assert multiply(a, b) == expected, (a, b)


def test_every_inverse() -> None:
    assert len(set(EXP[:255])) == 255  # 3 generates the whole multiplicative group
    for a in range(1, 256):
        assert multiply(a, inverse(a)) == 1, a
        assert inverse(a) == EXP[(255 - LOG[a]) % 255]
