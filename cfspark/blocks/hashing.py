"""Spark's hash(x) (Murmur3 x86_32) and xxhash64(x, seed) of integer ids, in numpy.

Setup hashes every rating's user and item twice: its block, pmod(hash(id), n), and the key
its initial factors are drawn from, xxhash64(id, seed). For integer ids the packing tasks
compute both from the id itself, so four columns fewer cross from the JVM to Arrow, and a
key is hashed once per entity rather than once per rating. Spark hashes byte, short and
int ids as 32-bit ints and long ids as 64-bit ones; so do these. Both of Spark's hashes
take any number of columns, hashing each with the previous one's hash as its seed, from
42: xxhash64(id, seed) is the hash of the literal seed, seeded by the id's hash.
(tests/test_hashing.py checks them against Spark's own expressions.)
"""

from __future__ import annotations

import numpy as np

SPARK_HASH_SEED = 42  # the seed of Spark's hash() and xxhash64() before their first column

_U32 = np.uint32
_U64 = np.uint64


def _rotl32(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _U32(r)) | (x >> _U32(32 - r))


def _rotl64(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _U64(r)) | (x >> _U64(64 - r))


def _mix_k1(k1: np.ndarray) -> np.ndarray:
    return _rotl32(k1 * _U32(0xCC9E2D51), 15) * _U32(0x1B873593)


def _mix_h1(h1: np.ndarray, k1: np.ndarray) -> np.ndarray:
    return _rotl32(h1 ^ k1, 13) * _U32(5) + _U32(0xE6546B64)


def _fmix32(h1: np.ndarray, length: int) -> np.ndarray:
    h1 = h1 ^ _U32(length)
    h1 = (h1 ^ (h1 >> _U32(16))) * _U32(0x85EBCA6B)
    h1 = (h1 ^ (h1 >> _U32(13))) * _U32(0xC2B2AE35)
    return h1 ^ (h1 >> _U32(16))


def murmur3(values: np.ndarray, *, wide: bool, seed: int = SPARK_HASH_SEED) -> np.ndarray:
    """Spark's hash(x) as int32: x an int (wide=False) or a long (wide=True)."""
    with np.errstate(over="ignore"):
        seeds = np.full(len(values), seed & 0xFFFFFFFF, dtype=_U32)
        if not wide:
            h1 = _mix_h1(seeds, _mix_k1(values.astype(np.int32).view(_U32)))
            return _fmix32(h1, 4).view(np.int32)
        bits = values.astype(np.int64).view(_U64)
        low, high = (bits & _U64(0xFFFFFFFF)).astype(_U32), (bits >> _U64(32)).astype(_U32)
        h1 = _mix_h1(_mix_h1(seeds, _mix_k1(low)), _mix_k1(high))
        return _fmix32(h1, 8).view(np.int32)


_P1, _P2, _P3 = _U64(0x9E3779B185EBCA87), _U64(0xC2B2AE3D27D4EB4F), _U64(0x165667B19E3779F9)
_P4, _P5 = _U64(0x85EBCA77C2B2AE63), _U64(0x27D4EB2F165667C5)


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = (h ^ (h >> _U64(33))) * _P2
    h = (h ^ (h >> _U64(29))) * _P3
    return h ^ (h >> _U64(32))


def _xxh64(values: np.ndarray, seeds: np.ndarray, *, wide: bool) -> np.ndarray:
    """XXH64 of one int (wide=False) or long (wide=True) per value, each with its own seed."""
    with np.errstate(over="ignore"):
        start = seeds.astype(np.int64).view(_U64) + (_P5 + _U64(8 if wide else 4))
        if not wide:
            word = values.astype(np.int32).view(_U32).astype(_U64)
            h = _rotl64(start ^ (word * _P1), 23) * _P2 + _P3
        else:
            k1 = _rotl64(values.astype(np.int64).view(_U64) * _P2, 31) * _P1
            h = _rotl64(start ^ k1, 27) * _P1 + _P4
        return _fmix64(h).view(np.int64)


def xxhash64(values: np.ndarray, seed: int, *, wide: bool) -> np.ndarray:
    """Spark's xxhash64(x, F.lit(seed)) as int64, x an int (wide=False) or a long (wide=True):
    the id hashed from 42, then the literal seed (an int if it fits in one) hashed from that."""
    first = _xxh64(values, np.full(len(values), SPARK_HASH_SEED, dtype=np.int64), wide=wide)
    literal_wide = not -(2**31) <= seed < 2**31
    return _xxh64(np.full(len(values), seed, dtype=np.int64), first, wide=literal_wide)


def hashed_blocks(values: np.ndarray, num_blocks: int, *, wide: bool) -> np.ndarray:
    """pmod(hash(x), num_blocks) as int32, as placement.hashed_block computes it in Spark."""
    return np.mod(murmur3(values, wide=wide).astype(np.int64), num_blocks).astype(np.int32)
