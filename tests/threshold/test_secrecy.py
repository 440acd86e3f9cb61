"""Any k - 1 shares reveal nothing: exhaustively, over the whole byte range, for small parameters.

Perfect secrecy means: whatever k - 1 share values an attacker sees, every secret byte is consistent
with them, and with exactly as many choices of the random coefficients. The tests drive the real
``split_bytes`` with every possible coefficient (k = 2) or solve for the polynomials by brute force
with the field operations alone (k = 3), never with the interpolation they are checking.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

from threshold.gf256 import inverse, multiply
from threshold.shamir import evaluate, interpolate, lagrange_basis, split_bytes

ALL_BYTES = bytes(range(256))


def _constant(value: int) -> Callable[[int], bytes]:
    def random_bytes(size: int) -> bytes:
        return bytes([value]) * size

    return random_bytes


def test_one_share_of_two_is_uniform_for_every_secret_byte() -> None:
    """k = 2, n = 3: for every secret byte s and share index x, the 256 possible coefficients map to
    256 distinct share values. So a single share value is equally likely under every secret."""
    seen: list[list[set[int]]] = [[set() for _ in range(256)] for _ in range(3)]
    for coefficient in range(256):
        # One split of a 256-byte secret holding every byte value, with the coefficient forced.
        shares = split_bytes(ALL_BYTES, 2, 3, random_bytes=_constant(coefficient))
        for x in range(3):
            for secret_byte in range(256):
                seen[x][secret_byte].add(shares[x][secret_byte])
    for x in range(3):
        for secret_byte in range(256):
            assert len(seen[x][secret_byte]) == 256, (x + 1, secret_byte)


# The whole multiplication table from the code under test (itself checked in test_gf256.py), so the
# brute force below is table look-ups.
PRODUCT = [[multiply(a, b) for b in range(256)] for a in range(256)]


def test_two_shares_of_three_fit_every_secret_byte_exactly_once() -> None:
    """k = 3: for every pair of share indices and sampled observed values (y1, y2), each of the 256
    secret bytes is consistent with exactly one polynomial f(z) = s + a·z + b·z² (brute force over a;
    b is then forced by f(x1) = y1, and f(x2) = y2 is checked)."""
    observed = [(0, 0), (0x53, 0xCA), (0xFF, 0x01)]
    for x1, x2 in itertools.combinations(range(1, 4), 2):
        inverse_x1_squared = inverse(PRODUCT[x1][x1])
        x2_squared = PRODUCT[x2][x2]
        for y1, y2 in observed:
            polynomials_per_secret: Counter[int] = Counter()
            for secret_byte in range(256):
                for a in range(256):
                    # y1 = s + a·x1 + b·x1²  =>  b = (y1 + s + a·x1) / x1²
                    b = PRODUCT[y1 ^ secret_byte ^ PRODUCT[a][x1]][inverse_x1_squared]
                    if secret_byte ^ PRODUCT[a][x2] ^ PRODUCT[b][x2_squared] == y2:
                        polynomials_per_secret[secret_byte] += 1
            assert sorted(polynomials_per_secret) == list(range(256)), (x1, x2, y1, y2)
            assert set(polynomials_per_secret.values()) == {1}, (x1, x2, y1, y2)
            b_check = PRODUCT[y1 ^ 7 ^ PRODUCT[9][x1]][inverse_x1_squared]
            assert evaluate([7, 9, b_check], x1) == y1  # the solved b really puts f through (x1, y1)


def test_any_k_minus_one_real_shares_fit_every_secret() -> None:
    """From k - 1 shares of a real split and any guessed secret byte, exactly one value of one more
    share completes them to k points whose polynomial has f(0) = guess: the seen shares rule out no
    guess."""
    secret = bytes(range(16, 48))
    for k, n in ((2, 3), (3, 3), (3, 5)):
        shares = split_bytes(secret, k, n)
        for seen in itertools.combinations(range(1, n + 1), k - 1):
            points = [*seen, n + 1]  # one point more than seen, at an index no share has
            basis = lagrange_basis(points)
            known = 0
            for coefficient, x in zip(basis, seen, strict=False):
                known ^= PRODUCT[coefficient][shares[x - 1][0]]
            completions = Counter(known ^ PRODUCT[basis[-1]][v] for v in range(256))
            assert sorted(completions) == list(range(256)), (k, n, seen)
            assert set(completions.values()) == {1}, (k, n, seen)
            # ... and the completions are real: interpolation through them gives the guess.
            for v in (0, 1, 200):
                assert interpolate(points, [*(shares[x - 1][:1] for x in seen), bytes([v])])[0] == (
                    known ^ PRODUCT[basis[-1]][v]
                )


def test_every_k_subset_recovers_the_secret() -> None:
    secret = bytes(range(100, 132))
    for k, n in ((2, 2), (2, 3), (3, 3), (3, 5), (5, 7)):
        shares = split_bytes(secret, k, n)
        for subset in itertools.combinations(range(1, n + 1), k):
            assert interpolate(list(subset), [shares[x - 1] for x in subset]) == secret, (k, n, subset)
