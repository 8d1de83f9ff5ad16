"""Live preview and live control for streaming nodes.

Server -> browser: one websocket event `sf.stream.chunk` per decoded chunk (frames as base64 JPEG) and
one `sf.stream.done` at the end; `web/sf_preview.js` plays them on the node.
Browser -> running node: HTTP routes `/sf/stop`, `/sf/prompt`, `/sf/status` drop requests into a
thread-safe mailbox keyed by node id, which the node polls between chunks (the routes run on the
server's event-loop thread, the node on the execution thread).

A stream is addressed by its execution and node locator: `node` is the id ComfyUI executes (inside a subgraph
a path such as "12:5"), and `prompt_id` the execution it belongs to. A request that names a prompt_id reaches
only that execution's stream, so a second tab showing the same workflow cannot steer another tab's run; the
widget always sends both (requests without a prompt_id, e.g. from scripts, reach whatever runs on that node).

Works without ComfyUI (no server: events are dropped), so it can be unit-tested anywhere.
"""
from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
from PIL import Image

CHUNK_EVENT = "sf.stream.chunk"
DONE_EVENT = "sf.stream.done"
PREVIEW_MAX_SIDE = 512
PREVIEW_JPEG_QUALITY = 85

# Node types (ComfyUI class names) that get the preview widget; filled by `load_node_mappings`.
PREVIEW_NODE_TYPES: set[str] = set()


class ControlMailbox:
    """Thread-safe live-control requests and status, keyed by node id (ComfyUI `unique_id`, str)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._streams: dict[str, dict] = {}
        self._stop: set[str] = set()
        self._prompt: dict[str, str] = {}
        self._steered: dict[str, int] = {}   # node -> runs that took a live request (stop, prompt switch)

    def begin(self, node_id, prompt_id=None, **info) -> None:
        """Mark a stream as running (of execution `prompt_id`, default: the one the server runs now) and drop
        stale requests left over from an earlier run."""
        node_id = str(node_id)
        prompt_id = prompt_id or getattr(_server(), "last_prompt_id", None)
        with self._lock:
            self._stop.discard(node_id)
            self._prompt.pop(node_id, None)
            self._streams[node_id] = {"started": time.time(), "prompt_id": prompt_id, **info}

    def _running(self, node_id: str, prompt_id) -> bool:
        """A stream runs on `node_id` (of execution `prompt_id`, when given); the lock is held."""
        stream = self._streams.get(node_id)
        return stream is not None and (prompt_id is None or stream["prompt_id"] == prompt_id)

    def update(self, node_id, **info) -> None:
        with self._lock:
            if str(node_id) in self._streams:
                self._streams[str(node_id)].update(info)

    def end(self, node_id) -> None:
        node_id = str(node_id)
        with self._lock:
            self._streams.pop(node_id, None)
            self._stop.discard(node_id)
            self._prompt.pop(node_id, None)

    def is_active(self, node_id) -> bool:
        with self._lock:
            return str(node_id) in self._streams

    def request_stop(self, node_id, prompt_id=None) -> bool:
        """Ask a running stream to finish its current chunk and return. False if it is not running."""
        node_id = str(node_id)
        with self._lock:
            if not self._running(node_id, prompt_id):
                return False
            self._stop.add(node_id)
            self._steer(node_id)
            return True

    def request_prompt(self, node_id, text: str, prompt_id=None) -> bool:
        """Ask a running stream to switch to `text` from its next chunk. False if it is not running."""
        node_id = str(node_id)
        with self._lock:
            if not self._running(node_id, prompt_id):
                return False
            self._prompt[node_id] = text
            self._steer(node_id)
            return True

    def _steer(self, node_id: str) -> None:
        """Count the running stream of `node_id` as steered (once per run); the lock is held."""
        stream = self._streams[node_id]
        if not stream.get("steered"):
            stream["steered"] = True
            self._steered[node_id] = self._steered.get(node_id, 0) + 1

    def steered_runs(self, node_id) -> int:
        """How many runs of this node took a live request: a change tells ComfyUI's cache to run it again."""
        with self._lock:
            return self._steered.get(str(node_id), 0)

    def stop_requested(self, node_id) -> bool:
        with self._lock:
            return str(node_id) in self._stop

    def take_prompt(self, node_id) -> str | None:
        """The pending prompt switch for this node (consumed), or None."""
        with self._lock:
            return self._prompt.pop(str(node_id), None)

    def status(self) -> dict:
        with self._lock:
            return {
                node_id: {**info, "stop_requested": node_id in self._stop,
                          "pending_prompt": self._prompt.get(node_id)}
                for node_id, info in self._streams.items()
            }


MAILBOX = ControlMailbox()


def encode_jpeg_frames(frames, max_side: int = PREVIEW_MAX_SIDE,
                       quality: int = PREVIEW_JPEG_QUALITY) -> tuple[list[str], int, int]:
    """Frames `[T, H, W, 3]` uint8 (numpy or torch) -> (base64 JPEG strings, width, height).

    Frames larger than `max_side` are downscaled (aspect kept) to bound the websocket payload.
    """
    array = frames.detach().cpu().numpy() if hasattr(frames, "detach") else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"preview frames must be uint8 [T, H, W, 3], got {array.dtype} {list(array.shape)}")
    height, width = array.shape[1:3]
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    encoded = []
    for frame in array:
        image = Image.fromarray(frame)
        if scale < 1.0:
            image = image.resize(size, Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded, size[0], size[1]


def _server():
    """The running ComfyUI PromptServer, or None outside ComfyUI."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def _send(event: str, payload: dict) -> dict:
    server = _server()
    if server is not None:
        if payload.get("prompt_id") is None:
            payload["prompt_id"] = getattr(server, "last_prompt_id", None)
        server.send_sync(event, payload, sid=server.client_id)
    return payload


def send_chunk_preview(node_id, chunk_index: int, frames_uint8, fps: float, latency_ms: float,
                       cache_frames: int | None, total_frames: int | None = None,
                       prompt_id: str | None = None) -> dict:
    """Send one decoded chunk (`[T, H, W, 3]` uint8) to the tab that queued the prompt.

    `total_frames` is the number of frames streamed so far including this chunk; `cache_frames` the
    latent frames held in the KV cache (None when not applicable). Returns the payload sent.
    """
    frames, width, height = encode_jpeg_frames(frames_uint8)
    payload = {
        "node": str(node_id), "prompt_id": prompt_id, "chunk_index": int(chunk_index),
        "fps": float(fps), "frames": frames, "width": width, "height": height,
        "latency_ms": float(latency_ms), "cache_frames": cache_frames,
        "total_frames": int(total_frames) if total_frames is not None else None,
    }
    return _send(CHUNK_EVENT, payload)


def send_stream_done(node_id, chunks: int, total_frames: int, reason: str,
                     prompt_id: str | None = None) -> dict:
    """Tell the player the stream ended; `reason` is 'finished', 'stopped' or 'interrupted'."""
    payload = {"node": str(node_id), "prompt_id": prompt_id, "chunks": int(chunks),
               "total_frames": int(total_frames), "reason": reason}
    return _send(DONE_EVENT, payload)


_routes_registered = False


def register_routes() -> bool:
    """Add `/sf/stop`, `/sf/prompt` and `/sf/status` to the ComfyUI server (once). False without one."""
    global _routes_registered
    server = _server()
    if server is None or _routes_registered:
        return _routes_registered
    from aiohttp import web

    async def read_node(request):
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("node") in (None, ""):
            raise web.HTTPBadRequest(text='expected a JSON body like {"node": "<node id>", "prompt_id": "<id>"}')
        prompt_id = body.get("prompt_id")
        return body, str(body["node"]), (None if prompt_id in (None, "") else str(prompt_id))

    def not_running(node_id, prompt_id):
        run = "" if prompt_id is None else f" for prompt {prompt_id}"
        return web.json_response({"ok": False, "error": f"node {node_id} is not streaming{run}"}, status=409)

    @server.routes.post("/sf/stop")
    async def stop(request):
        _, node_id, prompt_id = await read_node(request)
        if not MAILBOX.request_stop(node_id, prompt_id):
            return not_running(node_id, prompt_id)
        return web.json_response({"ok": True, "node": node_id})

    @server.routes.post("/sf/prompt")
    async def switch_prompt(request):
        body, node_id, prompt_id = await read_node(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise web.HTTPBadRequest(text='expected a non-empty "text" string')
        if not MAILBOX.request_prompt(node_id, text, prompt_id):
            return not_running(node_id, prompt_id)
        return web.json_response({"ok": True, "node": node_id})

    @server.routes.get("/sf/status")
    async def status(request):
        return web.json_response({"streams": MAILBOX.status(),
                                  "preview_node_types": sorted(PREVIEW_NODE_TYPES)})

    _routes_registered = True
    return True
