"""Stream timing and prompt schedules."""
import pytest
import torch

from sf_core.media.timing import (ScheduleError, chunk_at_time, chunk_frame_counts, chunk_start_frame, chunks_for_frames,
                              frames_in_chunk,
                              parse_schedule, schedule_switches)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_frame_counts_add_up(n):
    total, counts = 0, chunk_frame_counts(n)
    for k in range(6):
        assert chunk_start_frame(k, *counts) == total
        total += frames_in_chunk(k, n)
        assert chunks_for_frames(total, *counts) == k + 1
        assert chunks_for_frames(total + 1, *counts) == k + 2
    assert frames_in_chunk(0, 3) == 9 and frames_in_chunk(1, 3) == 12


def test_chunk_at_time_picks_the_nearest_chunk_start():
    fps, n = 16.0, 3
    counts = chunk_frame_counts(n)
    for k in range(8):
        start = chunk_start_frame(k, *counts)
        assert chunk_at_time(start / fps, fps, *counts) == k
        gap = frames_in_chunk(k, n)
        assert chunk_at_time((start + 3) / fps, fps, *counts) == k            # nearer this start
        assert chunk_at_time((start + gap - 3) / fps, fps, *counts) == k + 1  # nearer the next start
    assert chunk_at_time(0.0, fps, *counts) == 0
    assert chunk_at_time(4.5, 16.0, *counts) == 6  # the CLI's --prompt-at uses the same rule


def test_parse_schedule_units_comments_and_errors():
    entries = parse_schedule("# storyboard\n0s: a cat\n\n 4.5s :  a dog \nchunk 7: a bird\n9: a fish")
    assert [(e.prompt, e.at, e.unit) for e in entries] == [
        ("a cat", 0.0, "s"), ("a dog", 4.5, "s"), ("a bird", 7.0, "chunk"), ("a fish", 9.0, "chunk")]
    with pytest.raises(ScheduleError, match="line 2"):
        parse_schedule("0s: ok\nat five: nope")
    with pytest.raises(ScheduleError, match="empty"):
        parse_schedule("3s:   ")
    with pytest.raises(ScheduleError, match="empty"):
        parse_schedule("# nothing\n")


def test_switches_hard_and_blended():
    base, cat, dog = torch.zeros(1, 4, 2), torch.ones(1, 4, 2), torch.full((1, 4, 2), 3.0)
    entries = parse_schedule("chunk 1: cat\n2s: dog")  # 2 s at 16 fps = frame 32 -> chunk 3 (starts at 33)
    hard = schedule_switches(entries, {"cat": cat, "dog": dog}, base, 16.0, 3, first_chunk=10, recache=True)
    assert sorted(hard) == [11, 13]
    assert torch.equal(hard[11].context, cat) and torch.equal(hard[13].context, dog) and hard[13].recache
    blended = schedule_switches(entries[:1], {"cat": cat}, base, 16.0, 3, blend_chunks=4, recache=True)
    assert sorted(blended) == [1, 2, 3, 4]
    assert [float(blended[k].context[0, 0, 0]) for k in (1, 2, 3, 4)] == [0.25, 0.5, 0.75, 1.0]
    assert [blended[k].recache for k in (1, 2, 3, 4)] == [False, False, False, True]
    with pytest.raises(ScheduleError, match="same encoder"):
        schedule_switches(entries[:1], {"cat": torch.ones(1, 5, 2)}, base, 16.0, 3)
