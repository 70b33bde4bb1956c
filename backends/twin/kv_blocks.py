"""The paged KV cache: a pool of pages, per-request blocks, and prefix caching, after vLLM V1's block pool.

A request holds ``blocks`` blocks of ``block_size`` tokens. Each block takes ``full_groups`` pages (one
per full-attention layer group) plus, while it lies in the last window, ``sliding_groups`` pages (one
per sliding-window group); see ``capacity.KvLayout``. Pages are counted, not named.

Prefix caching works on full blocks: a full block gets a hash. With the request's token ids it is vLLM's
chained hash (``chained_block_hashes``: each block's tokens and the hash of the block before), so any two
prompts that start with the same token blocks share them: a multi-turn conversation's next turn finds the
previous turn's prompt and answer, K prefixes x M suffixes find their prefix. Without token ids (or past
them) it is the request's ``prefix_key`` and the block index inside the shared prefix; after the hashed
blocks, the request's own id and the index, so a preempted request finds its own blocks again.
A freed hashed block stays cached (evictable, counted as free) with the pages it held:
its full-attention pages, plus its sliding-window pages when it lay in the request's last window. A hit
needs every block of the hit prefix cached, and the blocks of its last window cached with their sliding
pages (vLLM's hybrid manager checks the same). A block that leaves a running request's window frees its
sliding-window pages into the cache too (vLLM's free queue keeps their hash), so a later request with the
same prefix still finds them until evicted. Eviction is least recently freed first, a
request's blocks freed tail first, so its head survives longest (vLLM's free-queue order). Two requests
running at once share only full-attention pages of a common prefix; each keeps its own sliding-window pages.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from backends.twin.capacity import KvLayout


def chained_block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """vLLM's block hashes: one per full block, each over the block's tokens and the previous hash."""
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        previous = hash((previous, tuple(token_ids[start : start + block_size])))
        hashes.append(previous)
    return hashes


@dataclass(frozen=True, slots=True)
class _Sliding:
    """The cache entry of a held block's sliding-window pages, freed when it left its request's window."""

    key: Hashable


class BlockOwner:
    """The KV state one request keeps; the engine's request type extends it."""

    __slots__ = ("blocks", "hashes", "prefix_blocks", "prefix_key", "request_id", "token_hashes")

    def __init__(
        self,
        request_id: str,
        prefix_key: str | None,
        prefix_blocks: int,
        token_hashes: Sequence[int] | None = None,
    ) -> None:
        self.request_id = request_id
        self.prefix_key = prefix_key
        self.prefix_blocks = prefix_blocks
        # Chained hashes of the request's token blocks (prompt, then the answer it will give), when known.
        self.token_hashes = token_hashes
        self.blocks = 0
        # Hash of each leading full block registered for sharing; None for a block kept private.
        self.hashes: list[Hashable | None] = []

    def block_hash(self, index: int) -> Hashable:
        token_hashes = self.token_hashes
        if token_hashes is not None and index < len(token_hashes):
            return token_hashes[index]
        if index < self.prefix_blocks:  # past the known tokens, the prompt's content still names it
            return (self.prefix_key, index)
        return (self.request_id, index)


class BlockPool:
    def __init__(self, num_pages: int, layout: KvLayout, block_size: int, enable_caching: bool) -> None:
        self.num_pages = num_pages
        self.block_size = block_size
        self.full_pages = layout.full_groups
        self.sliding_pages = layout.sliding_groups
        self.sliding_cap = layout.sliding_cap_blocks
        self.enable_caching = enable_caching
        self.used_pages = 0
        self.active: dict[Hashable, int] = {}  # hash -> number of requests holding the block
        # Freed but still valid (evictable) blocks -> the pages they keep.
        self.cached: OrderedDict[Hashable, int] = OrderedDict()
        self.cached_pages = 0

    @property
    def free_pages(self) -> int:
        """Pages an allocation may take: truly free plus cached-but-evictable ones (vLLM counts both)."""
        return self.num_pages - self.used_pages

    @property
    def usage(self) -> float:
        return self.used_pages / self.num_pages

    def pages_between(self, old_blocks: int, new_blocks: int) -> int:
        cap = self.sliding_cap
        sliding = new_blocks - old_blocks if cap is None else min(new_blocks, cap) - min(old_blocks, cap)
        return self.full_pages * (new_blocks - old_blocks) + self.sliding_pages * sliding

    def count_hits(self, owner: BlockOwner, num_tokens: int) -> int:
        """Leading blocks already computed somewhere; the last token is always recomputed (as vLLM)."""
        if not self.enable_caching:
            return 0
        limit = (num_tokens - 1) // self.block_size
        active, cached = self.active, self.cached
        hits = 0
        last_without_window = -1  # last hit block cached without its sliding-window pages
        while hits < limit:
            key = owner.block_hash(hits)
            if key not in active:
                pages = cached.get(key)
                if pages is None:
                    break
                if pages == self.full_pages and self.sliding_pages:
                    last_without_window = hits
            hits += 1
        if self.sliding_cap is not None:
            # The hit's last window must have its sliding pages: cut the hit back before such a block.
            # The window is vLLM's cdiv(sliding_window - 1, block_size) blocks, one fewer than a running
            # request holds (``sliding_cap``: its window may straddle one more block).
            cap = self.sliding_cap - 1
            while last_without_window >= 0 and hits - cap <= last_without_window:
                hits = last_without_window
                last_without_window = -1
                for index in range(max(0, hits - cap), hits):
                    key = owner.block_hash(index)
                    if key not in active and cached.get(key) == self.full_pages:
                        last_without_window = index
        return hits

    def allocate_first(self, owner: BlockOwner, hits: int, total_tokens: int) -> bool:
        """Blocks for a request leaving the waiting queue: ``hits`` cached blocks, then new ones."""
        need = -(-total_tokens // self.block_size)
        active, cached = self.active, self.cached
        revived = 0
        for i in range(hits):
            if owner.block_hash(i) not in active:
                revived += 1
        pages = (
            self.full_pages * (revived + need - hits) + self.pages_between(0, need) - self.full_pages * need
        )
        if pages > self.num_pages - self.used_pages:
            return False
        hashes = owner.hashes
        for i in range(hits):
            key = owner.block_hash(i)
            if key in active:
                active[key] += 1
            else:
                self.cached_pages -= cached.pop(key)
                active[key] = 1
            hashes.append(key)
        owner.blocks = need
        self.used_pages += pages
        self._evict()
        self._register(owner, total_tokens)
        self._keep_left_window(owner, 0, need)  # a prompt longer than the window: its head is out already
        return True

    def allocate(self, owner: BlockOwner, total_tokens: int) -> bool:
        """Grow a running request to hold ``total_tokens``; False when the pool cannot."""
        need = -(-total_tokens // self.block_size)
        if need > owner.blocks:
            pages = self.pages_between(owner.blocks, need)
            if pages > self.num_pages - self.used_pages:
                return False
            old = owner.blocks
            owner.blocks = need
            self.used_pages += pages
            if self.cached:
                self._evict()
        else:
            old = need
        if self.enable_caching and total_tokens // self.block_size > len(owner.hashes):
            self._register(owner, total_tokens)
        if old < need:
            self._keep_left_window(owner, old, need)
        return True

    def _keep_left_window(self, owner: BlockOwner, old_blocks: int, new_blocks: int) -> None:
        """The blocks that left ``owner``'s window keep their sliding pages as evictable cache."""
        if self.sliding_cap is None or not self.sliding_pages or not self.enable_caching:
            return
        hashes, cached = owner.hashes, self.cached
        added = False
        for index in range(
            max(0, old_blocks - self.sliding_cap), min(new_blocks - self.sliding_cap, len(hashes))
        ):
            key = hashes[index]
            if key is not None and _Sliding(key) not in cached:
                cached[_Sliding(key)] = self.sliding_pages
                self.cached_pages += self.sliding_pages
                added = True
        if added:
            self._evict()

    def free(self, owner: BlockOwner) -> None:
        """Release a finished or preempted request's pages; its hashed blocks stay cached."""
        private = owner.blocks - len(owner.hashes)
        active, cached = self.active, self.cached
        released = self.pages_between(0, owner.blocks) - self.full_pages * owner.blocks
        window_start = 0 if self.sliding_cap is None else owner.blocks - self.sliding_cap
        with_window = self.full_pages + self.sliding_pages
        for index in range(len(owner.hashes) - 1, -1, -1):
            key = owner.hashes[index]
            if key is None:
                private += 1
                continue
            count = active[key] - 1
            if count:
                active[key] = count
            else:
                del active[key]
                pages = with_window if index >= window_start else self.full_pages
                kept = cached.pop(_Sliding(key), None)
                if kept is not None:  # its sliding pages, kept when it left a window, join it
                    self.cached_pages -= kept
                    pages = with_window
                cached[key] = pages
                self.cached_pages += pages
                released += self.full_pages
        released += self.full_pages * private
        self.used_pages -= released
        owner.blocks = 0
        owner.hashes = []

    def _register(self, owner: BlockOwner, total_tokens: int) -> None:
        if not self.enable_caching:
            return
        hashes, active, cached = owner.hashes, self.active, self.cached
        for index in range(len(hashes), total_tokens // self.block_size):
            key = owner.block_hash(index)
            if key in active or key in cached:
                # Computed twice concurrently (or rebuilt after its chain broke): keep this copy private.
                hashes.append(None)
            else:
                active[key] = 1
                hashes.append(key)

    def _evict(self) -> None:
        cached = self.cached
        free = self.num_pages - self.used_pages
        while cached and self.cached_pages > free:
            self.cached_pages -= cached.popitem(last=False)[1]

    def check(self) -> None:
        """Invariants, for tests: pages never over-allocated and cached pages within the free ones."""
        if not 0 <= self.used_pages <= self.num_pages:
            raise AssertionError(f"used pages {self.used_pages} outside 0..{self.num_pages}")
        if self.cached_pages != sum(self.cached.values()):
            raise AssertionError("cached page count out of step with the cached blocks")
        if self.cached_pages > self.num_pages - self.used_pages:
            raise AssertionError("cached blocks hold more pages than are free")
        if set(self.active) & set(self.cached):
            raise AssertionError("a block is both active and cached")
