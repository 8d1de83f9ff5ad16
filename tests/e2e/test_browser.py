"""The real web UI in headless chromium (network limited to loopback) plays streamed frames in the
preview widget. Needs scripts/install_browser.sh; set SF_UPDATE_SCREENSHOTS=1 to refresh the README
screenshot docs/images/preview_widget.png."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = Path(os.environ.get("SF_NODE_DIR", REPO / ".cache" / "node"))
CHROMIUM = os.environ.get("SF_CHROMIUM", "/usr/bin/chromium")
SCRIPT = Path(__file__).parent / "browser" / "preview.mjs"
CHUNKS, FRAMES_PER_CHUNK = 10, 8


@pytest.fixture(scope="module")
def browser_ready():
    if not Path(CHROMIUM).exists() or not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip(f"chromium ({CHROMIUM}) or playwright-core ({NODE_DIR}) missing: run scripts/install_browser.sh")


def test_preview_widget_draws_streamed_frames(comfy, browser_ready, artifacts_dir, tmp_path):
    workflow = {"7": {"class_type": "SFPreviewTestPattern", "inputs": {
        "text": "Self Forcing live preview", "width": 320, "height": 192, "chunks": CHUNKS,
        "frames_per_chunk": FRAMES_PER_CHUNK, "fps": 16.0, "chunk_seconds": 0.3}}}
    workflow_path = tmp_path / "workflow.json"
    workflow_path.write_text(json.dumps(workflow))
    completed = subprocess.run(
        ["node", str(SCRIPT), comfy.base_url, str(workflow_path), str(tmp_path)],
        env={**os.environ, "SF_NODE_DIR": str(NODE_DIR), "SF_CHROMIUM": CHROMIUM},
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "failure" not in result, result["failure"]

    for name in ("preview_widget.png", "preview_node.png"):
        shutil.copy(tmp_path / name, artifacts_dir / name)
    if os.environ.get("SF_UPDATE_SCREENSHOTS") == "1":
        (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "preview_widget.png", REPO / "docs" / "images" / "preview_widget.png")

    assert result["widgetBeforeQueue"], "the widget should be created with the node (from /sf/status)"
    stats = result["stats"]
    assert stats["chunks"] == CHUNKS and stats["lastChunk"] == CHUNKS - 1
    assert stats["framesReceived"] == CHUNKS * FRAMES_PER_CHUNK == stats["framesDrawn"]
    assert stats["done"] == "finished"
    assert result["framesDrawnAttr"] == str(stats["framesDrawn"])
    assert (result["canvas"]["width"], result["canvas"]["height"]) == (320, 192)
    assert result["canvas"]["lumaStd"] > 10 and result["canvas"]["colours"] > 50, result["canvas"]
    assert f"frames {stats['framesDrawn']}/{CHUNKS * FRAMES_PER_CHUNK}" in result["readout"]
    assert any("[sf_preview] ready" in line for line in result["console"])
    assert not result["errors"], result["errors"]
    print(f"\nbrowser: UI ready {result['uiReadyMs']} ms, stream+playback {result['streamMs']} ms, "
          f"playback {result['playbackFps']:.1f} fps, blocked {len(result['blocked'])} outside requests")
