"""Decode a stream chunk by chunk, optionally with decoding of chunk k overlapping the denoising of chunk k+1.

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
from typing import Callable, Iterator

import torch

from sf_core.pipeline import Chunk, StreamingPipeline
from sf_core.state import StreamState

_DONE = object()


def decode_stream(chunks: Iterator[Chunk], decoder, device, overlap: bool = False,
                  stop: Callable[[], bool] | None = None) -> Iterator[tuple[Chunk, torch.Tensor]]:
    """(chunk, frames [B, T, 3, H, W]) for the chunks of `chunks` (e.g. `pipe.stream(...)`, prompt switches
    included), decoded in order; with `overlap`, the DiT of chunk k+1 runs while chunk k decodes.

    `stop()` is asked before each next chunk is started: once it is true no new chunk is made, and every chunk
    already made is still decoded and yielded (so the stream state always matches what was yielded)."""
    if overlap:
        yield from _overlapped(chunks, decoder, torch.device(device), stop)
    else:
        for chunk in _until(chunks, stop):
            yield chunk, decoder.decode_chunk(chunk.latents)


def decode_sequential(pipe: StreamingPipeline, state: StreamState, decoder, num_chunks: int,
                      commit_last: bool = True) -> Iterator[tuple[Chunk, torch.Tensor]]:
    """The plain loop: step, decode, yield (chunk, frames [B, T, 3, H, W])."""
    return decode_stream(pipe.stream(state, num_chunks, commit_last=commit_last), decoder, pipe.device)


def decode_overlapped(pipe: StreamingPipeline, state: StreamState, decoder, num_chunks: int,
                      commit_last: bool = True) -> Iterator[tuple[Chunk, torch.Tensor]]:
    """Same results as `decode_sequential`, with the DiT of chunk k+1 running while chunk k decodes.

    `commit_last=False` skips the cache-update pass of the last chunk (the stream then cannot be continued).
    """
    return decode_stream(pipe.stream(state, num_chunks, commit_last=commit_last), decoder, pipe.device,
                         overlap=True)


def _until(chunks: Iterator[Chunk], stop: Callable[[], bool] | None) -> Iterator[Chunk]:
    chunks = iter(chunks)
    while stop is None or not stop():
        chunk = next(chunks, None)
        if chunk is None:
            return
        yield chunk


def _overlapped(chunks: Iterator[Chunk], decoder, device: torch.device,
                stop: Callable[[], bool] | None) -> Iterator[tuple[Chunk, torch.Tensor]]:
    handoff: queue.Queue = queue.Queue(maxsize=1)
    closed = threading.Event()
    cuda = device.type == "cuda"
    dit_stream = torch.cuda.Stream(device=device) if cuda else None

    def put(item) -> bool:
        while not closed.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with torch.cuda.stream(dit_stream) if cuda else nullcontext():
                for chunk in _until(chunks, lambda: closed.is_set() or (stop is not None and stop())):
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
                torch.cuda.current_stream(device).wait_event(ready)
                chunk.latents.record_stream(torch.cuda.current_stream(device))
            yield chunk, decoder.decode_chunk(chunk.latents)
    finally:
        closed.set()
        worker.join()
