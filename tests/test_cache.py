import pytest
import torch

from sf_core.cache import CacheError, KVCache
from sf_core.config import ModelConfig

CFG = ModelConfig(dim=4, ffn_dim=4, num_heads=1, num_layers=2, text_len=2)  # head_dim 4


def _official_rolling(ops, capacity, sink):
    """Independent list simulation of the official write/evict rules (selfforcing.md §3.3).

    ops: sequence of (cs, ce, tag) token ranges. Returns buffer tags and (G, Lc) after each op.
    """
    buf = [None] * capacity
    g = lc = 0
    for cs, ce, tag in ops:
        length = ce - cs
        if ce > g and lc + length > capacity:
            n_evict = length + lc - capacity
            n_keep = lc - n_evict - sink
            moved = buf[sink + n_evict: sink + n_evict + n_keep]
            buf[sink: sink + n_keep] = moved
            new_lc = lc + (ce - g) - n_evict
        else:
            new_lc = lc + (ce - g)
        buf[new_lc - length:new_lc] = [(tag, i) for i in range(cs, ce)]
        g, lc = max(g, ce), new_lc
    return buf[:lc], g, lc


def _run(cache, ops):
    for cs, ce, tag in ops:
        cache.begin(cs, ce - cs)
        for layer in range(CFG.num_layers):
            vals = torch.tensor([tag * 1000 + i for i in range(cs, ce)], dtype=torch.float32)
            kv = vals.view(1, -1, 1, 1).expand(1, -1, 1, 4)
            cache.update(layer, kv, kv)
        cache.end()


@pytest.mark.parametrize("window,sink,chunk", [(6, 0, 3), (7, 0, 3), (9, 3, 3), (5, 1, 1), (8, 2, 3)])
def test_rolling_matches_official_rules(window, sink, chunk):
    ft = 2  # tokens per frame
    cache = KVCache.allocate(CFG, 1, ft, 0, window=window, sink=sink)
    ops = []
    for c in range(9):
        cs, ce = c * chunk * ft, (c + 1) * chunk * ft
        ops += [(cs, ce, 1), (cs, ce, 2), (cs, ce, 3)]  # three passes of the same chunk
    _run(cache, ops)
    ref, g, lc = _official_rolling(ops, window * ft, sink * ft)
    assert (cache.global_end, cache.local_end) == (g, lc)
    got = [int(x) for x in cache.k[1, 0, :lc, 0, 0].tolist()]
    assert got == [tag * 1000 + i for tag, i in ref]
    # the sink keeps the very first frames, last pass of each chunk wins
    assert got[: sink * ft] == [3000 + i for i in range(sink * ft)]


def test_repass_overwrites_in_place_and_never_reallocates():
    cache = KVCache.allocate(CFG, 1, 2, 0, window=6)
    ptr = cache.k.data_ptr()
    _run(cache, [(0, 6, 1), (0, 6, 2)])
    assert (cache.global_end, cache.local_end) == (6, 6)
    _run(cache, [(6 * c, 6 * c + 6, 1) for c in range(1, 50)])
    assert cache.k.data_ptr() == ptr and cache.local_end == 12


def test_update_returns_views_without_autograd():
    cache = KVCache.allocate(CFG, 1, 2, 4)
    cache.begin(0, 4)
    k, _ = cache.update(0, torch.ones(1, 4, 1, 4), torch.ones(1, 4, 1, 4))
    assert k.data_ptr() == cache.k[0].data_ptr()


def test_global_overflow_and_bad_writes_are_explained():
    cache = KVCache.allocate(CFG, 1, 2, 3)
    _run(cache, [(0, 6, 1)])
    with pytest.raises(CacheError, match="global KV cache full.*rolling window"):
        cache.begin(6, 6)
    with pytest.raises(CacheError, match="does not continue"):
        cache.begin(20, 6)
    with pytest.raises(CacheError, match="does not fit a window"):
        KVCache.allocate(CFG, 1, 2, 0, window=4, sink=2).begin(0, 6)
    with pytest.raises(CacheError, match="sink"):
        KVCache.allocate(CFG, 1, 2, 0, window=4, sink=4)
    with pytest.raises(CacheError, match="rolling window"):
        KVCache.allocate(CFG, 1, 2, 4, sink=1)


def test_state_dict_roundtrip_and_clone_independent():
    cache = KVCache.allocate(CFG, 1, 2, 0, window=6, sink=1)
    _run(cache, [(6 * c, 6 * c + 6, 1) for c in range(4)])
    back = KVCache.from_state_dict(cache.state_dict())
    assert torch.equal(back.k, cache.k) and (back.global_end, back.local_end) == (cache.global_end, cache.local_end)
    twin = cache.clone()
    _run(twin, [(24, 30, 5)])
    assert cache.global_end == 24 and twin.global_end == 30
    assert not torch.equal(twin.k, cache.k)


def test_reserve_grows_global_caches_only():
    cache = KVCache.allocate(CFG, 1, 2, 3)
    _run(cache, [(0, 6, 1)])
    before = cache.k[:, :, :6].clone()
    cache.reserve(7)
    assert cache.capacity == 14 and torch.equal(cache.k[:, :, :6], before)
    _run(cache, [(6, 12, 2)])  # would have overflowed before
    rolling = KVCache.allocate(CFG, 1, 2, 0, window=4)
    rolling.reserve(100)
    assert rolling.capacity == 8


def _used(cache):
    return cache.k[:, :, :cache.local_end].clone()


def test_shared_global_cache_continues_without_copying_and_leaves_the_original_intact():
    cache = KVCache.allocate(CFG, 1, 2, 6)
    _run(cache, [(0, 6, 1)])
    before = _used(cache)
    reference = cache.clone()
    twin = cache.share()
    _run(twin, [(6, 12, 2), (6, 12, 3)])  # next chunk, then its cache-update re-pass
    _run(reference, [(6, 12, 2), (6, 12, 3)])
    assert twin.k.data_ptr() == cache.k.data_ptr() and twin.shared  # appended in place
    assert torch.equal(_used(twin), _used(reference)) and torch.equal(_used(cache), before)


def test_second_branch_from_a_shared_cache_copies_and_both_branches_are_exact():
    cache = KVCache.allocate(CFG, 1, 2, 6)
    _run(cache, [(0, 6, 1)])
    first, second = cache.share(), cache.share()
    _run(first, [(6, 12, 2)])
    _run(second, [(6, 12, 3)])  # the same slots the first branch wrote: must not overwrite them
    assert second.k.data_ptr() != cache.k.data_ptr() and not second.shared
    for branch, tag in ((first, 2), (second, 3)):
        reference = cache.clone()
        reference.local_end = reference.global_end = 6
        _run(reference, [(6, 12, tag)])
        assert torch.equal(_used(branch), _used(reference))


def test_the_original_copies_when_it_continues_after_its_twin():
    cache = KVCache.allocate(CFG, 1, 2, 6)
    _run(cache, [(0, 6, 1)])
    twin = cache.share()
    _run(twin, [(6, 12, 2)])
    seen_by_twin = _used(twin)
    _run(cache, [(6, 12, 9)])
    assert torch.equal(_used(twin), seen_by_twin) and cache.k.data_ptr() != twin.k.data_ptr()


@pytest.mark.parametrize("mode", ["rolling", "recache"])
def test_writes_below_the_shared_tokens_copy_once(mode):
    rolling = mode == "rolling"
    cache = KVCache.allocate(CFG, 1, 2, 6, window=3 if rolling else -1)
    _run(cache, [(0, 6, 1)])
    before = _used(cache)
    twin = cache.share()
    if not rolling:
        twin.reset()  # a prompt switch with recache re-passes the window from token 0
    ops = [(6, 12, 2), (12, 18, 3)] if rolling else [(0, 6, 4), (6, 12, 5)]
    reference = cache.clone()
    if not rolling:
        reference.reset()
    _run(twin, ops[:1])
    copied = twin.k.data_ptr()
    _run(twin, ops[1:])
    _run(reference, ops)
    assert copied != cache.k.data_ptr() and twin.k.data_ptr() == copied  # one copy, then in place
    assert torch.equal(_used(twin), _used(reference)) and torch.equal(_used(cache), before)


def test_reserve_grows_geometrically():
    cache = KVCache.allocate(CFG, 1, 2, 4)
    moves, pointer = 0, cache.k.data_ptr()
    for frames in range(5, 41):
        cache.reserve(frames)
        moves += cache.k.data_ptr() != pointer  # the old buffer is alive while copying: a move changes it
        pointer = cache.k.data_ptr()
        assert cache.capacity >= 2 * frames
    assert moves == 6  # 4 → 6 → 9 → 14 → 21 → 32 → 48 frames, not 36 reallocations
