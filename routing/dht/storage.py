"""Bounded storage of signed dictionary records: key -> {subkey: record}. Pure, no clock.

A store merges into the key's dictionary: per subkey the record that expires last wins, so
every peer can announce itself under a shared key without overwriting the others. A get
returns the live records of a key. The whole storage holds at most `max_records` records;
when full, the record that expires soonest goes first (a newcomer that would expire sooner
than everything stored is refused instead). Expired records are dropped lazily.

Why not hivemind's `TimedStorage`: it reads the module-global `time.time()` (we pass `now`
so the tests can run on trio's MockClock), it stores flat keys (the dictionary layer would
be ours anyway), and importing it runs `hivemind/__init__`, which loads torch.
"""

from __future__ import annotations

import heapq

from security import PeerId

from ..records import SignedRecord


class RecordStorage:
    def __init__(self, *, max_records: int, max_subkeys_per_key: int) -> None:
        if max_records < 1 or max_subkeys_per_key < 1:
            raise ValueError("storage limits must be positive")
        self.max_records = max_records
        self.max_subkeys_per_key = max_subkeys_per_key
        self._data: dict[str, dict[PeerId, SignedRecord]] = {}
        self._count = 0
        # (expiration, key, subkey); entries whose record was replaced are skipped lazily
        self._heap: list[tuple[float, str, PeerId]] = []

    def __len__(self) -> int:
        return self._count

    def store(self, record: SignedRecord, now: float) -> bool:
        """Merge a verified record; True if it is now stored, False if refused or stale."""
        self.expire(now)
        if record.expiration <= now:
            return False
        entries = self._data.get(record.key)
        old = entries.get(record.subkey) if entries is not None else None
        if old is not None:
            if old.expiration >= record.expiration:
                return old == record
            self._data[record.key][record.subkey] = record
            self._push(record)
            return True
        full_key = entries is not None and len(entries) >= self.max_subkeys_per_key
        if full_key and not self._evict_soonest_of(record.key, before=record.expiration):
            return False
        while self._count >= self.max_records:
            if not self._evict_soonest(before=record.expiration):
                return False
        self._data.setdefault(record.key, {})[record.subkey] = record
        self._count += 1
        self._push(record)
        return True

    def _push(self, record: SignedRecord) -> None:
        heapq.heappush(self._heap, (record.expiration, record.key, record.subkey))
        if len(self._heap) > 2 * self._count + 64:  # drop entries of replaced records
            self._heap = [entry for entry in self._heap if self._is_current(*entry)]
            heapq.heapify(self._heap)

    def get(self, key: str, now: float) -> dict[PeerId, SignedRecord]:
        self.expire(now)
        return dict(self._data.get(key, {}))

    def keys(self) -> list[str]:
        return list(self._data)

    def expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            self._pop_heap_top()

    def _evict_soonest(self, *, before: float) -> bool:
        """Drop the record expiring first, if it expires before `before`."""
        while self._heap:
            expiration, key, subkey = self._heap[0]
            if not self._is_current(expiration, key, subkey):
                heapq.heappop(self._heap)
                continue
            if expiration >= before:
                return False
            self._pop_heap_top()
            return True
        return False

    def _evict_soonest_of(self, key: str, *, before: float) -> bool:
        entries = self._data[key]
        subkey = min(entries, key=lambda s: entries[s].expiration)
        if entries[subkey].expiration >= before:
            return False
        self._remove(key, subkey)
        return True

    def _is_current(self, expiration: float, key: str, subkey: PeerId) -> bool:
        record = self._data.get(key, {}).get(subkey)
        return record is not None and record.expiration == expiration

    def _pop_heap_top(self) -> None:
        expiration, key, subkey = heapq.heappop(self._heap)
        if self._is_current(expiration, key, subkey):
            self._remove(key, subkey)

    def _remove(self, key: str, subkey: PeerId) -> None:
        entries = self._data[key]
        del entries[subkey]
        self._count -= 1
        if not entries:
            del self._data[key]
