"""Pagemap: a radix tree over 48-bit addresses, read without locks."""
import pytest

PAGE_BITS = 35          # 48-bit addresses, 8 KiB pages


def test_empty_map_reads_nothing(comp):
    pm = comp.PrivatePagemap()
    for page in (0, 1, 4095, 4096, 1 << 24, (1 << PAGE_BITS) - 1, 1 << PAGE_BITS, 1 << 40):
        assert pm.get(page) == (0, 0)
    assert pm.node_bytes == 0


def test_set_get_round_trip_across_leaf_boundaries(comp):
    pm = comp.PrivatePagemap()
    leaf = comp.PAGEMAP_LEAF_PAGES
    pages = [0, 1, leaf - 1, leaf, leaf + 1, 5 * leaf - 1, (1 << PAGE_BITS) - 1, 0x3ABCDEF12]
    for i, page in enumerate(pages):
        assert pm.ensure(page, 1) == 0
        pm.set(page, 0x1000 + 16 * i, cl=(i % 100) + 1)
    for i, page in enumerate(pages):
        assert pm.get(page) == (0x1000 + 16 * i, (i % 100) + 1)
        # free()'s read, from any address in the page
        for off in (0, 1, 4095, 8191):
            assert pm.class_of((page << 13) + off) == (i % 100) + 1
    # neighbours stay empty
    assert pm.get(2) == (0, 0)
    assert pm.get(leaf + 2) == (0, 0)
    assert pm.class_of(2 << 13) == pm.class_of((leaf + 2) << 13) == 0


def test_free_reads_class_0_where_no_leaf_or_past_48_bits(comp):
    # free() does not test for a missing leaf: an address there must read
    # class 0 (not tcalloc's) all the same, as must one past 48 bits.
    pm = comp.PrivatePagemap()
    leaf = comp.PAGEMAP_LEAF_PAGES
    assert pm.ensure(3 * leaf, 1) == 0
    pm.set(3 * leaf, 0x1000, cl=7)
    assert pm.class_of((3 * leaf) << 13) == 7
    for addr in (0, 8, (2 * leaf) << 13, ((4 * leaf) << 13) - 8, (3 * leaf + 1) << 13,
                 (1 << 48) - 8, 1 << 48, (1 << 64) - 8, 0xDEADBEEF0000):
        assert pm.class_of(addr) == 0, hex(addr)


def test_free_reads_the_same_class_through_the_hot_leaf_and_around_it(comp):
    # free() tries the leaf the heap last grew into first (one load that
    # waits for the address instead of two); every other leaf, no leaf, an
    # address past 48 bits or one that shares the hot leaf's low 32 bits
    # reads as through the root.
    pm = comp.PrivatePagemap()
    leaf = comp.PAGEMAP_LEAF_PAGES
    assert pm.hot_index == -1 and pm.class_of(0) == 0 and pm.class_of(5 << 13) == 0
    a, b = 2 * leaf + 5, 7 * leaf + 5
    assert pm.ensure(a, 1) == 0
    pm.set(a, 0x1000, cl=3)
    assert pm.hot_index == 2
    assert pm.ensure(b, 1) == 0
    pm.set(b, 0x2000, cl=9)
    assert pm.hot_index == 7
    for off in (0, 8, 8191):
        assert pm.class_of((b << 13) + off) == 9      # through the hot leaf
        assert pm.class_of((a << 13) + off) == 3      # through the root
    low = (b << 13) & 0xFFFFFFFF                       # b's place in a 4 GiB leaf...
    for hi in (0, 1, 9, (1 << 16) - 1, 1 << 16, (1 << 32) - 1):
        if hi not in (2, 7):                           # ...in leaves that are not b's
            assert pm.class_of((hi << 32) | low) == 0, hex(hi)
    assert pm.ensure(a, 1) == 0                        # growth there again: a's leaf is hot
    assert pm.hot_index == 2
    assert pm.class_of(a << 13) == 3 and pm.class_of(b << 13) == 9


def test_heap_bits_mark_exactly_the_ranges_given(comp):
    # The bits that tell the interpreter hook which addresses are the heap's:
    # ranges starting and ending inside a byte of bits, spanning whole
    # bytes, and crossing a leaf boundary, marked exactly (pages just
    # outside stay unmarked), and never cleared by marking a neighbour.
    pm = comp.PrivatePagemap()
    leaf = comp.PAGEMAP_LEAF_PAGES
    ranges = [(3, 2), (13, 30), (64, 64), (leaf - 5, 17), (5 * leaf + 8, 1), (7 * leaf - 64, 128)]
    marked = set()
    for start, n in ranges:
        pm.mark_heap(start, n)
        marked.update(range(start, start + n))
    probe = set()
    for start, n in ranges:
        probe.update(range(start - 9, start + n + 9))
    for page in sorted(p for p in probe if p >= 0):
        assert pm.is_heap(page) == (page in marked), page
    assert not pm.is_heap(9 * leaf), "a page with no leaf"


def test_ensure_creates_each_node_once(comp):
    pm = comp.PrivatePagemap()
    leaf = comp.PAGEMAP_LEAF_PAGES
    assert pm.ensure(leaf * 10, leaf) == 0
    one_leaf = pm.node_bytes
    assert one_leaf > 0
    assert pm.ensure(leaf * 10 + 5, 100) == 0
    assert pm.node_bytes == one_leaf, "ensure of a covered range must not allocate"
    assert pm.ensure(leaf * 10, leaf + 1) == 0      # spills into the next leaf
    assert pm.node_bytes > one_leaf
    assert pm.has_leaf(leaf * 11) and not pm.has_leaf(leaf * 12)
    # nodes come from the private metadata arena, never malloc
    assert pm.arena_mapped_bytes >= pm.node_bytes


def test_ensure_rejects_pages_beyond_48_bits(comp):
    pm = comp.PrivatePagemap()
    assert pm.ensure((1 << PAGE_BITS) - 1, 1) == 0
    assert pm.ensure((1 << PAGE_BITS) - 1, 2) == -1
    assert pm.ensure(1 << PAGE_BITS, 1) == -1
    with pytest.raises(KeyError):
        pm.set(1 << 30, 0x10)      # no leaf there: refused, not a crash


def test_lock_free_readers_see_empty_or_written_values(comp):
    r = comp.pagemap_concurrent(readers=3, writes=20000, seed=7)
    assert r["bad"] == 0, r
    assert r["seen"] > 0 and r["reads"] > 0, r


def test_page_heap_spans_are_found_through_their_pagemap(comp):
    h = comp.PrivateHeap()
    small = h.new(4, 5)               # a small-object span of class 5
    large = h.new(20)
    si, li = h.span(small), h.span(large)
    for off in range(0, si["nbytes"], 4096):
        assert h.lookup(si["addr"] + off) == (small, 5)
    assert h.lookup(li["addr"]) == (large, 0)
    assert h.lookup(li["addr"] + li["nbytes"] - 1) == (large, 0)
    h.delete(small)
    assert h.lookup(si["addr"])[1] == 0, "a freed small span must lose its class"
    assert h.check() == []
