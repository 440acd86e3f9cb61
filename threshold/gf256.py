"""Arithmetic in GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B), without tables.

Multiplication is shift-and-add with masks instead of branches or table look-ups, so its sequence of
operations does not depend on the operands (a table indexed by a secret byte leaks it through the cache
in native code). That is all it can promise in Python: integers are objects, the interpreter's own work
is not constant time, and nothing here is a side-channel guarantee. It avoids the obvious leaks.
"""

from __future__ import annotations

__all__ = ["add", "inverse", "multiply"]

_REDUCTION = 0x1B  # x^8 = x^4 + x^3 + x + 1 in this field


def add(a: int, b: int) -> int:
    """Addition (and subtraction) is XOR."""
    return a ^ b


def multiply(a: int, b: int) -> int:
    """a · b, eight rounds whatever the operands (no early exit, no branch on their bits)."""
    product = 0
    for _ in range(8):
        product ^= -(b & 1) & a  # add a when b's low bit is set: the mask is 0x...FF or 0
        carry = -(a >> 7) & _REDUCTION  # reduce when a overflows x^7
        a = ((a << 1) & 0xFF) ^ carry
        b >>= 1
    return product & 0xFF


def inverse(a: int) -> int:
    """a^-1 = a^254 (the multiplicative group has order 255), by a fixed chain of squarings.

    The inverse of 0 does not exist; this returns 0 for it, and callers never ask (they invert
    differences of distinct share indices, which are never 0).
    """
    result = 1
    square = a
    for bit in range(8):  # 254 = 0b11111110: multiply in every square but the first, always computed
        keep = -((254 >> bit) & 1)
        candidate = multiply(result, square)
        result = (candidate & keep) | (result & ~keep)
        square = multiply(square, square)
    return result & 0xFF
