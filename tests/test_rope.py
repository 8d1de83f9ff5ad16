import math

import torch

from sf_core.rope import apply_rope, axis_angles, axis_dims, grid_freqs, shift_temporal


def test_axis_split_for_head_dim_128():
    assert axis_dims(128) == (44, 42, 42)


def test_formula_equals_official_1024_row_table_bitwise():
    for dim in (44, 42):
        inv = 1.0 / torch.pow(10000.0, torch.arange(0, dim, 2).to(torch.float64).div(dim))
        table = torch.polar(torch.ones(1024, dim // 2, dtype=torch.float64),
                            torch.outer(torch.arange(1024), inv))
        assert torch.equal(axis_angles(torch.arange(1024), dim), table)


def test_apply_rope_rotates_interleaved_pairs():
    torch.manual_seed(0)
    head_dim, f, h, w, start = 12, 2, 2, 3, 5
    x = torch.randn(1, f * h * w, 2, head_dim)
    out = apply_rope(x, grid_freqs(f, h, w, head_dim, start))
    dt, dh, _ = axis_dims(head_dim)
    ref = torch.empty_like(x)
    for tok in range(f * h * w):
        fi, hi, wi = tok // (h * w) + start, (tok // w) % h, tok % w
        for pair in range(head_dim // 2):
            if pair < dt // 2:
                pos, j, d = fi, pair, dt
            elif pair < dt // 2 + dh // 2:
                pos, j, d = hi, pair - dt // 2, dh
            else:
                pos, j, d = wi, pair - dt // 2 - dh // 2, dh
            ang = pos * 10000 ** (-2 * j / d)
            a, b = x[0, tok, :, 2 * pair].double(), x[0, tok, :, 2 * pair + 1].double()
            ref[0, tok, :, 2 * pair] = (a * math.cos(ang) - b * math.sin(ang)).float()
            ref[0, tok, :, 2 * pair + 1] = (a * math.sin(ang) + b * math.cos(ang)).float()
    assert (out - ref).abs().max() < 1e-6


def test_shift_temporal_reindexes_post_rope_keys():
    torch.manual_seed(1)
    k = torch.randn(1, 2 * 4, 2, 12)
    at_1000 = apply_rope(k, grid_freqs(2, 2, 2, 12, 1000))
    at_10 = apply_rope(k, grid_freqs(2, 2, 2, 12, 10))
    assert (shift_temporal(at_1000, -990, 12) - at_10).abs().max() < 1e-5


def test_positions_past_the_table_keep_relative_geometry():
    """q·k depends only on the temporal distance, also beyond row 1023."""
    torch.manual_seed(2)
    q, k = torch.randn(1, 1, 1, 12), torch.randn(1, 1, 1, 12)
    def score(pq, pk):
        return (apply_rope(q, grid_freqs(1, 1, 1, 12, pq)) * apply_rope(k, grid_freqs(1, 1, 1, 12, pk))).sum()
    assert abs(score(20, 5) - score(5020, 5005)) < 1e-4
