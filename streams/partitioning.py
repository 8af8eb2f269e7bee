"""Which partition a key lands in: the Java client's default partitioner (murmur2), as the
Java producer, librdkafka's ``murmur2_random``, aiokafka and kafka-python use. Pure, so the
pipeline and its tests route records exactly as the cluster does (checked against aiokafka
in tests/unit/test_pipeline.py)."""

from __future__ import annotations

import zlib
from typing import Literal

# "murmur2": the Java client, librdkafka's murmur2_random, aiokafka, kafka-python.
# "crc32": librdkafka's default (consistent_random) - kcat, confluent-kafka, rdkafka-based
# clients left at their defaults.
Hash = Literal["murmur2", "crc32"]

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 (seed 0x9747b28c) of ``data``, as ``org.apache.kafka.common.utils.Utils``."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    for i in range(0, length - length % 4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & ~3
    extra = length % 4
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def key_hash(key: bytes, kind: Hash = "murmur2") -> int:
    """The non-negative hash a producer's partitioner takes modulo the partition count."""
    if kind == "crc32":
        return zlib.crc32(key)
    return murmur2(key) & 0x7FFFFFFF


def faust_partitioner(kind: Hash) -> object:
    """A ``producer_partitioner`` for Faust: table routing (which worker holds a key) then
    agrees with how the producers partition."""

    def partition(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return available[0] if available else all_partitions[0]
        return all_partitions[key_hash(key, kind) % len(all_partitions)]

    return partition


class KeyPartitioner:
    """``partition(topic, key)`` for topics with known partition counts, with a hash cache
    (keys repeat: a customer's events all hash the same)."""

    __slots__ = ("_cache_size", "_hashes", "kind", "partitions")

    def __init__(
        self, partitions: dict[str, int], cache_size: int = 2_000_000, kind: Hash = "murmur2"
    ) -> None:
        self.partitions = partitions
        self._hashes: dict[str, int] = {}
        self._cache_size = cache_size
        self.kind = kind

    def hash(self, key: str) -> int:
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= self._cache_size:
                self._hashes.clear()
            h = self._hashes[key] = key_hash(key.encode(), self.kind)
        return h

    def __call__(self, topic: str, key: str) -> int:
        return self.hash(key) % self.partitions[topic]
