"""Generate and decode a stream with decoding of chunk k overlapping the denoising of chunk k+1.

A producer thread runs `pipeline.step` (at most one chunk ahead, so memory stays bounded) while the
calling thread decodes and yields. First-frame latency is unchanged (chunk 0 is decoded as soon as it
exists); afterwards decode time hides behind DiT time. On CUDA the producer issues its kernels on its own
stream and hands over an event, so the two streams can run concurrently on the GPU; on CPU the two threads
share the intra-op thread pool. Every tensor op is the same as in the sequential loop, so outputs are
identical (tests/speed/test_speed.py).
"""
from __future__ import annotations

import queue
import threading
from contextlib import nullcontext
from typing import Iterator

import torch

from sf_core.pipeline import Chunk, StreamingPipeline
from sf_core.state import StreamState

_DONE = object()


def _chunks_needing_commit(num_chunks: int, commit_last: bool) -> list[bool]:
    return [commit_last or i + 1 < num_chunks for i in range(num_chunks)]


def decode_sequential(pipe: StreamingPipeline, state: StreamState, decoder, num_chunks: int,
                      commit_last: bool = True) -> Iterator[tuple[Chunk, torch.Tensor]]:
    """The plain loop: step, decode, yield (chunk, frames [B, T, 3, H, W])."""
    for commit in _chunks_needing_commit(num_chunks, commit_last):
        chunk = pipe.step(state, commit=commit)
        yield chunk, decoder.decode_chunk(chunk.latents)


def decode_overlapped(pipe: StreamingPipeline, state: StreamState, decoder, num_chunks: int,
                      commit_last: bool = True) -> Iterator[tuple[Chunk, torch.Tensor]]:
    """Same results as `decode_sequential`, with the DiT of chunk k+1 running while chunk k decodes.

    `commit_last=False` skips the cache-update pass of the last chunk (the stream then cannot be continued).
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    cuda = pipe.device.type == "cuda"
    dit_stream = torch.cuda.Stream(device=pipe.device) if cuda else None

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with torch.cuda.stream(dit_stream) if cuda else nullcontext():
                for commit in _chunks_needing_commit(num_chunks, commit_last):
                    if stop.is_set():
                        return
                    chunk = pipe.step(state, commit=commit)
                    ready = None
                    if cuda:
                        ready = torch.cuda.Event()
                        ready.record(dit_stream)
                    if not put((chunk, ready)):
                        return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, re-raised there
            put(exc)

    worker = threading.Thread(target=produce, name="sf-dit-producer", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            chunk, ready = item
            if ready is not None:
                torch.cuda.current_stream(pipe.device).wait_event(ready)
                chunk.latents.record_stream(torch.cuda.current_stream(pipe.device))
            yield chunk, decoder.decode_chunk(chunk.latents)
    finally:
        stop.set()
        worker.join()

