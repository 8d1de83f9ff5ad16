// Self Forcing live preview: plays each streamed chunk on the node while the sampler runs.
//
// Server events (nodes/live.py):
//   sf.stream.chunk {node, prompt_id, chunk_index, fps, frames: [base64 JPEG], width, height,
//                    latency_ms, cache_frames, total_frames}
//   sf.stream.done  {node, prompt_id, chunks, total_frames, reason}
// Control routes: POST /sf/stop {node, prompt_id}, POST /sf/prompt {node, prompt_id, text}; GET /sf/status.
// `node` is the executed node's locator ("5", or "12:5" for node 5 inside subgraph node 12) and `prompt_id`
// the execution: a tab only steers streams it received, so two tabs of one workflow never cross.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const WIDGET_NAME = "sf_preview";
const MAX_QUEUED_BYTES = 256 * 1024 * 1024; // decoded RGBA frames waiting to be drawn; the oldest go first
const MIN_QUEUED_FRAMES = 16;
let previewNodeTypes = new Set();

function decodeFrame(base64) {
  const image = new Image();
  image.src = `data:image/jpeg;base64,${base64}`;
  return image.decode().then(() => image);
}

class Player {
  constructor(node) {
    this.node = node;
    this.promptId = null;
    this.streamNode = null;   // the locator the stream's events carry
    this.queue = [];          // decoded frames waiting to be drawn, in order
    this.animating = false;   // a requestAnimationFrame loop runs only while frames wait
    this.pending = Promise.resolve(); // keeps chunk decoding in arrival order
    this.fps = 16;
    this.nextDue = 0;
    this.drawTimes = [];
    this.stats = { chunks: 0, framesReceived: 0, framesDrawn: 0, framesDropped: 0, maxQueued: 0, lastChunk: -1,
                   latencyMs: null, cacheFrames: null, totalFrames: 0, done: null };
    this.buildDom();
    this.removed = false;
    const onRemoved = node.onRemoved;
    node.onRemoved = function () {
      this.sfPlayer.removed = true;
      return onRemoved?.apply(this, arguments);
    };
    node.sfPlayer = this;
    this.tick = this.tick.bind(this);
  }

  wake() {
    if (this.animating || this.removed || !this.queue.length) return;
    this.animating = true;
    requestAnimationFrame(this.tick);
  }

  buildDom() {
    const root = document.createElement("div");
    root.className = "sf-preview";
    root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;" +
      "font:11px monospace;color:#ddd;box-sizing:border-box;";
    this.canvas = document.createElement("canvas");
    this.canvas.width = 256;
    this.canvas.height = 256;
    this.canvas.style.cssText = "flex:1 1 auto;min-height:0;width:100%;object-fit:contain;background:#111;";
    this.readout = document.createElement("div");
    this.readout.textContent = "waiting for frames";
    const controls = document.createElement("div");
    controls.style.cssText = "display:flex;gap:4px;";
    this.promptInput = document.createElement("input");
    this.promptInput.type = "text";
    this.promptInput.placeholder = "new prompt";
    this.promptInput.style.cssText = "flex:1;min-width:0;font:11px sans-serif;";
    const switchButton = this.button("Switch prompt", () => this.switchPrompt());
    const stopButton = this.button("Stop", () => this.stop());
    controls.append(this.promptInput, switchButton, stopButton);
    root.append(this.canvas, this.readout, controls);
    this.root = root;
    this.widget = this.node.addDOMWidget(WIDGET_NAME, "sf_preview", root, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => 200,
    });
    this.widget.sfPlayer = this;
    const [width, height] = this.node.size;
    this.node.setSize([Math.max(width, 320), Math.max(height, 360)]);
  }

  button(label, onClick) {
    const button = document.createElement("button");
    button.textContent = label;
    button.onclick = (event) => { event.stopPropagation(); onClick(); };
    return button;
  }

  async post(path, body) {
    let response;
    try {
      response = await api.fetchApi(path, { method: "POST", body: JSON.stringify(body) });
    } catch (err) {  // server gone or network error: say so on the node instead of an unhandled rejection
      this.setStatus(`${path} failed: ${err.message || err}`);
      return {};
    }
    const reply = await response.json().catch(() => ({}));
    if (!response.ok) this.setStatus(reply.error || `${path} failed (${response.status})`);
    return reply;
  }

  control(path, extra = {}) {
    if (!this.promptId) {  // e.g. a second tab: the stream on this node (if any) was queued elsewhere
      this.setStatus("no stream from this tab on this node");
      return Promise.resolve({});
    }
    return this.post(path, { node: this.streamNode, prompt_id: this.promptId, ...extra });
  }

  stop() { return this.control("/sf/stop"); }

  switchPrompt() {
    const text = this.promptInput.value.trim();
    if (text) return this.control("/sf/prompt", { text });
  }

  reset(promptId) {
    this.promptId = promptId;
    this.queue = [];
    this.drawTimes = [];
    this.nextDue = 0;
    this.stats = { chunks: 0, framesReceived: 0, framesDrawn: 0, framesDropped: 0, maxQueued: 0, lastChunk: -1,
                   latencyMs: null, cacheFrames: null, totalFrames: 0, done: null };
  }

  maxQueuedFrames(width, height) {
    return Math.max(MIN_QUEUED_FRAMES, Math.floor(MAX_QUEUED_BYTES / (4 * width * height)));
  }

  onChunk(chunk) {
    if (chunk.prompt_id !== this.promptId) this.reset(chunk.prompt_id);
    this.streamNode = String(chunk.node);
    this.fps = chunk.fps > 0 ? chunk.fps : this.fps;
    this.pending = this.pending.then(async () => {
      const frames = await Promise.all(chunk.frames.map(decodeFrame));
      if (chunk.prompt_id !== this.promptId) return;
      this.queue.push(...frames);
      const excess = this.queue.length - this.maxQueuedFrames(chunk.width, chunk.height);
      if (excess > 0) this.queue.splice(0, excess);  // a tab that fell far behind skips ahead
      Object.assign(this.stats, {
        framesDropped: this.stats.framesDropped + Math.max(0, excess),
        maxQueued: Math.max(this.stats.maxQueued, this.queue.length),
        chunks: this.stats.chunks + 1, framesReceived: this.stats.framesReceived + frames.length,
        lastChunk: chunk.chunk_index, latencyMs: chunk.latency_ms, cacheFrames: chunk.cache_frames,
        totalFrames: chunk.total_frames ?? this.stats.framesReceived + frames.length,
      });
      if (this.canvas.width !== chunk.width || this.canvas.height !== chunk.height) {
        this.canvas.width = chunk.width;
        this.canvas.height = chunk.height;
        // Small streams (e.g. the 16×16 toy world) are scaled up a lot: keep their pixels crisp.
        this.canvas.style.imageRendering = Math.max(chunk.width, chunk.height) < 128 ? "pixelated" : "auto";
      }
      this.updateReadout();
      this.wake();
    }).catch((error) => this.setStatus(`preview error: ${error}`));
  }

  onDone(done) {
    if (done.prompt_id !== this.promptId) this.reset(done.prompt_id);
    this.pending = this.pending.then(() => {
      this.stats.done = done.reason;
      this.updateReadout();
    });
  }

  tick(now) {
    if (this.removed || !this.queue.length) {  // idle: no loop until the next chunk wakes it
      this.animating = false;
      return;
    }
    if (now >= this.nextDue) {
      const frame = this.queue.shift();
      this.canvas.getContext("2d").drawImage(frame, 0, 0, this.canvas.width, this.canvas.height);
      this.stats.framesDrawn += 1;
      this.drawTimes.push(now);
      if (this.drawTimes.length > 32) this.drawTimes.shift();
      // Pace at the stream fps; after a stall, restart the clock instead of bursting to catch up.
      const interval = 1000 / this.fps;
      this.nextDue = now - this.nextDue > interval ? now + interval : this.nextDue + interval;
      this.updateReadout();
    }
    requestAnimationFrame(this.tick);
  }

  playbackFps() {
    const times = this.drawTimes;
    if (times.length < 2) return null;
    return (1000 * (times.length - 1)) / (times[times.length - 1] - times[0]);
  }

  updateReadout() {
    const s = this.stats;
    const fps = this.playbackFps();
    const parts = [
      `FPS ${fps === null ? "–" : fps.toFixed(1)}/${this.fps}`,
      `chunk ${s.lastChunk} ${s.latencyMs === null ? "" : Math.round(s.latencyMs) + " ms"}`,
      `cache ${s.cacheFrames ?? "–"}`,
      `frames ${s.framesDrawn}/${s.totalFrames}`,
    ];
    if (s.done) parts.push(s.done);
    this.readout.textContent = parts.join(" · ");
    this.root.dataset.framesDrawn = String(s.framesDrawn);
  }

  setStatus(text) { this.readout.textContent = text; }
}

// The graph node an executed locator names: "5" at the root, "12:5" = node 5 inside subgraph node 12.
function nodeAt(locator) {
  let graph = app.graph;
  let node = null;
  for (const id of String(locator).split(":")) {
    node = graph?.getNodeById(Number(id)) ?? graph?.getNodeById(id) ?? null;
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}

// The player of a graph node, created on first use (e.g. a stream node unknown at page load).
function playerFor(locator) {
  const node = nodeAt(locator);
  if (!node) return null;
  return node.sfPlayer ?? new Player(node);
}

app.registerExtension({
  name: "SelfForcing.LivePreview",

  async init() {
    try {
      const response = await api.fetchApi("/sf/status");
      previewNodeTypes = new Set((await response.json()).preview_node_types ?? []);
    } catch (error) {
      console.warn("[sf_preview] /sf/status unavailable; the widget appears on the first chunk", error);
    }
  },

  async setup() {
    api.addEventListener("sf.stream.chunk", ({ detail }) => playerFor(detail.node)?.onChunk(detail));
    api.addEventListener("sf.stream.done", ({ detail }) => playerFor(detail.node)?.onDone(detail));
    window.sfPreview = { playerFor, nodeAt };
    console.log("[sf_preview] ready");
  },

  nodeCreated(node) {
    if (previewNodeTypes.has(node.comfyClass)) new Player(node);
  },
});
