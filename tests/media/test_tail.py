import pytest
import torch

from sf_core.media.tail import Tail


@pytest.mark.parametrize("limit", [None, 0, 1, 5, 12, 13, 100])
def test_tail_keeps_exactly_the_last_entries(limit):
    stream = torch.arange(60.0).view(60, 1)
    tail = Tail(limit)
    for piece in torch.split(stream, [9] + [3] * 17):
        tail.append(piece)
        held = sum(p.shape[0] for p in tail._pieces)
        assert limit is None or held < (limit or 1) + 9  # bounded: the limit plus at most one piece
    expected = stream if limit is None else stream[max(0, len(stream) - limit):]
    assert torch.equal(tail.result(), expected) and tail.seen == 60


def test_tail_on_another_axis_and_empty_results():
    tail = Tail(2, dim=1)
    assert tail.result() is None
    tail.append(torch.ones(1, 3, 4))
    assert tail.result().shape == (1, 2, 4)
    none = Tail(0, dim=1)
    none.append(torch.ones(1, 3, 4))
    assert none.result().shape == (1, 0, 4)
    with pytest.raises(ValueError, match="keep all"):
        Tail(-1)
