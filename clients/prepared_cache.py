"""A least-recently-used cache bounded by the bytes it holds, for the sites' prepared data.

One simulation process (a Ray worker) answers for hundreds of simulated sites, one after
the other, round after round. A cache bounded by a number of entries has to be sized for
the largest storefront and thrashes when it is smaller than the number of sites a worker
serves (every message then re-reads and re-featurises its Parquet file); one bounded by
bytes keeps every site of a small-storefront federation and still stays within memory
for a few large ones. Sizes are estimated by :func:`estimated_bytes` (tensors, arrays and
frames by their buffers), so the budget is approximate but not off by orders of magnitude.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import pandas as pd
import torch

Value = TypeVar("Value")


@dataclass
class CacheStats:
    """What the cache did since it was created or cleared."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass(frozen=True)
class _Entry(Generic[Value]):
    version: Hashable
    value: Value
    size: int


class ByteBudgetCache(Generic[Value]):
    """LRU of computed values whose estimated sizes add up to at most ``budget_bytes``.

    A value larger than the whole budget is returned but not kept. Not thread-safe: a
    ClientApp process answers one message at a time.
    """

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 1:
            raise ValueError(f"budget_bytes must be >= 1, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, _Entry[Value]] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable, version: Hashable, compute: Callable[[], Value]) -> Value:
        """The cached value of ``key`` if it was computed for ``version``, else ``compute()``
        (kept if it fits the budget, replacing the entry of an older version). Exceptions
        of ``compute`` propagate and nothing is cached."""
        entry = self._entries.get(key)
        if entry is not None and entry.version == version:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry.value
        self.stats.misses += 1
        if entry is not None:  # an older version of the data: never served again
            self._bytes -= self._entries.pop(key).size
        value = compute()
        size = estimated_bytes(value)
        if size <= self.budget_bytes:
            while self._bytes + size > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size
                self.stats.evictions += 1
            self._entries[key] = _Entry(version, value, size)
            self._bytes += size
        return value

    @property
    def bytes(self) -> int:
        """Estimated bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Empty the cache and reset its statistics."""
        self._entries.clear()
        self._bytes = 0
        self.stats = CacheStats()


def estimated_bytes(value: object, _seen: set[int] | None = None) -> int:
    """Approximate memory held by ``value``: buffers of tensors, arrays and frames, plus
    ``sys.getsizeof`` of containers, dataclasses and plain objects, followed recursively
    (each object counted once)."""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, pd.DataFrame | pd.Series | pd.Index):
        usage = value.memory_usage(deep=True)
        return int(usage.sum() if isinstance(usage, pd.Series) else usage)
    size = sys.getsizeof(value)
    if isinstance(value, Mapping):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        children = list(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        children = [getattr(value, field.name) for field in dataclasses.fields(value)]
    elif hasattr(value, "__dict__"):
        children = list(vars(value).values())
    else:
        children = []
    return size + sum(estimated_bytes(child, seen) for child in children)
