"""Size classes: bounded waste for every request size, the table's shape,
and the lookup table agreeing with size_class_of."""
import pytest

import tcalloc

MAX_SMALL = 262144


@pytest.fixture(scope="module")
def table():
    return tcalloc.size_class_table()


def test_every_request_size_gets_a_class_that_fits_and_wastes_little(comp):
    priv = comp.sizemap_private()
    sizes = {cl: size for (cl, size, _, _, _) in priv["classes"]}
    lookup = priv["lookup"]
    bad = []
    for s in range(1, MAX_SMALL + 1):
        c = sizes.get(lookup[s])
        # 1/8 of the block, 1/5 where the classes are 4 per power of two
        limit = c // 5 if c is not None and 16384 < c <= 65536 else max(15, (c or 0) // 8)
        if c is None or c < s or (c - s) > limit:
            bad.append((s, c))
            if len(bad) > 10:
                break
    assert not bad, "request size -> class size violating fit or waste bound: %r" % bad


def test_public_table_matches_a_fresh_private_table(comp, table):
    priv = comp.sizemap_private()
    assert [tuple(r) for r in table] == [tuple(r) for r in priv["classes"]]


def test_size_class_of_agrees_with_table_lookup(comp, table):
    lookup = comp.sizemap_private()["lookup"]
    sizes = {cl: size for (cl, size, _, _, _) in table}
    for s in range(1, MAX_SMALL + 1):
        cl, size = tcalloc.size_class_of(s)
        assert cl == lookup[s] and size == sizes[cl], s
    assert tcalloc.size_class_of(MAX_SMALL + 1) == (0, 0)


def test_classes_sorted_and_aligned(table):
    sizes = [size for (_, size, _, _, _) in table]
    # 16 B minimum: every block is 16-byte aligned (C's malloc guarantee on
    # x86-64) and has the second word the double-free key lives in.
    assert sizes[0] == 16 and sizes[-1] == MAX_SMALL
    assert sizes == sorted(set(sizes)), "classes must be strictly increasing"
    for s in sizes:
        assert s % 16 == 0, s
    assert len(table) < 128


def test_every_power_of_two_is_a_class(table):
    sizes = {size for (_, size, _, _, _) in table}
    p = 16
    while p <= MAX_SMALL:
        assert p in sizes, p
        p *= 2


def test_span_tails_bounded_and_batches_in_range(table):
    for cl, size, pages, batch, per_span in table:
        span = pages * 8192
        assert span >= size
        assert per_span == span // size
        # 1/8 of the span; 1/32 for blocks of one to two pages, where 1/8
        # left a 4 KiB tail in every 40 KiB span of 9 KiB blocks
        bound = span // 32 if 8192 < size < 16384 else span // 8
        assert span - per_span * size <= bound, (cl, size, pages)
        assert 2 <= batch <= 64, (cl, size, batch)
        assert batch == max(2, min(64, 65536 // size)), (cl, size, batch)   # 64 KiB worth
    # small objects move 64 at a time, the largest 2
    assert table[0][3] == 64 and table[-1][3] == 2


def test_a_page_with_a_header_of_its_own_wastes_little():
    # CPython's compiler arena blocks are 8192 + 32 B, and a script's arena
    # lives as long as the script runs: each one in the 9216 B class left
    # 992 B of slack beside glibc's 16.
    for header in (8, 16, 32, 64, 128, 256):
        cl, size = tcalloc.size_class_of(8192 + header)
        assert size - (8192 + header) < 256, (header, size)


def test_aligned_class_sizes_are_multiples_of_alignment(comp, table):
    sizes = {cl: size for (cl, size, _, _, _) in table}
    for (size, align), cl in comp.sizemap_private()["aligned"].items():
        assert cl != 0, (size, align)
        assert sizes[cl] >= size and sizes[cl] % align == 0, (size, align, sizes[cl])


@pytest.mark.parametrize("bad, err", [(-1, ValueError), (True, TypeError), (1.0, TypeError),
                                      ("8", TypeError), (None, TypeError)])
def test_size_class_of_refuses_what_is_not_a_size(bad, err):
    with pytest.raises(err):
        tcalloc.size_class_of(bad)
