"""Shamir secret sharing over GF(2^8), byte by byte: the bare arithmetic, no formats.

Each byte of the secret is the constant term of its own random polynomial of degree k - 1; share x
(1..n) holds every polynomial's value at x. Any k shares determine the polynomials (Lagrange
interpolation at 0); any k - 1 are consistent with every value of every secret byte, each with exactly
as many polynomials, so they say nothing about it (tests/threshold/test_secrecy.py checks this over the
whole byte range). Intermediate values live in bytearrays that are overwritten before returning.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

from threshold.gf256 import add, inverse, multiply

__all__ = ["evaluate", "interpolate", "lagrange_basis", "split_bytes"]

RandomBytes = Callable[[int], bytes]


def evaluate(coefficients: Sequence[int], x: int) -> int:
    """The polynomial with ``coefficients`` (constant term first) at x, by Horner's rule."""
    value = 0
    for coefficient in reversed(coefficients):
        value = add(multiply(value, x), coefficient)
    return value


def split_bytes(
    secret: bytes | bytearray, k: int, n: int, *, random_bytes: RandomBytes = secrets.token_bytes
) -> list[bytearray]:
    """The n share values (share x is at index x - 1) of ``secret`` with threshold k.

    ``random_bytes`` supplies the k - 1 random coefficients of every byte's polynomial; only tests
    pass anything but the operating system's CSPRNG.
    """
    if not 1 <= k <= n <= 255:
        raise ValueError(f"need 1 <= k <= n <= 255, not k={k}, n={n}")
    shares = [bytearray(len(secret)) for _ in range(n)]
    randomness = bytearray(random_bytes((k - 1) * len(secret)))
    if len(randomness) != (k - 1) * len(secret):
        raise ValueError("the random source returned the wrong number of bytes")
    coefficients = bytearray(k)
    try:
        for position, secret_byte in enumerate(secret):
            coefficients[0] = secret_byte
            for degree in range(1, k):  # element by element: a slice would be an unwiped copy
                coefficients[degree] = randomness[position * (k - 1) + degree - 1]
            for x in range(1, n + 1):
                shares[x - 1][position] = evaluate(coefficients, x)
    finally:
        _wipe(coefficients)
        _wipe(randomness)
    return shares


def lagrange_basis(xs: Sequence[int], at: int = 0) -> list[int]:
    """The Lagrange coefficients l_i with f(at) = Σ l_i · f(x_i), for distinct nonzero xs."""
    if len(set(xs)) != len(xs) or not all(1 <= x <= 255 for x in xs):
        raise ValueError("share indices must be distinct and in 1..255")
    basis = []
    for i, x_i in enumerate(xs):
        numerator, denominator = 1, 1
        for j, x_j in enumerate(xs):
            if j != i:
                numerator = multiply(numerator, add(at, x_j))
                denominator = multiply(denominator, add(x_i, x_j))
        basis.append(multiply(numerator, inverse(denominator)))
    return basis


def interpolate(xs: Sequence[int], ys: Sequence[bytes | bytearray], at: int = 0) -> bytearray:
    """The polynomials through (xs[i], ys[i]) evaluated at ``at``, byte by byte (at 0: the secret)."""
    if len(xs) != len(ys) or not ys or len({len(y) for y in ys}) != 1:
        raise ValueError("one value of the same length per share index")
    basis = lagrange_basis(xs, at)
    result = bytearray(len(ys[0]))
    for position in range(len(result)):
        value = 0
        for coefficient, y in zip(basis, ys, strict=True):
            value = add(value, multiply(coefficient, y[position]))
        result[position] = value
    return result


def _wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))
