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
