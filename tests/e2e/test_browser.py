"""The real web UI in headless chromium (network limited to loopback): queues the T2V stream workflow
(workflows/api/t2v_stream.json on tiny checkpoints with the real file names) and checks that the preview
widget on the sampler received and drew every streamed frame. Also converts the API workflows into the
UI-format workflows users drag onto the canvas. Needs scripts/install_browser.sh.

SF_UPDATE_SCREENSHOTS=1 refreshes the README screenshot docs/images/preview_widget.png (from the 0.3.75 host);
SF_UPDATE_WORKFLOWS=1 rewrites workflows/*.json from workflows/api/*.json."""
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
BROWSER = Path(__file__).parent / "browser"
API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
CHUNKS, WIDTH, HEIGHT = 4, 128, 80
FRAMES = 9 + 12 * (CHUNKS - 1)  # 3 latent frames per chunk: 9 pixel frames first, then 12


@pytest.fixture(scope="module")
def browser_ready():
    if not Path(CHROMIUM).exists() or not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip(f"chromium ({CHROMIUM}) or playwright-core ({NODE_DIR}) missing: run scripts/install_browser.sh")


def node_script(script: str, *args: str, timeout: int = 600) -> dict:
    completed = subprocess.run(["node", str(BROWSER / script), *args], capture_output=True, text=True,
                               env={**os.environ, "SF_NODE_DIR": str(NODE_DIR), "SF_CHROMIUM": CHROMIUM},
                               timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_preview_widget_draws_the_streamed_frames_of_the_real_workflow(comfy, models, browser_ready, artifacts_dir,
                                                                       tmp_path):
    workflow = json.loads((REPO / "workflows" / "api" / "t2v_stream.json").read_text())
    sampler = workflow["5"]["inputs"]
    assert workflow["5"]["class_type"] == "SFStreamSampler"
    sampler.update(width=WIDTH, height=HEIGHT, length=CHUNKS, length_unit="chunks", filename_prefix="browser/t2v")
    workflow_path = tmp_path / "workflow.json"
    workflow_path.write_text(json.dumps(workflow))
    result = node_script("preview.mjs", comfy.base_url, str(workflow_path), str(tmp_path))
    assert "failure" not in result, result["failure"]

    for name in ("preview_widget.png", "preview_node.png"):
        shutil.copy(tmp_path / name, artifacts_dir / name)
    if os.environ.get("SF_UPDATE_SCREENSHOTS") == "1" and comfy.host.primary:
        (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "preview_widget.png", REPO / "docs" / "images" / "preview_widget.png")

    assert result["widgetBeforeQueue"], "the widget should be created with the node (from /sf/status)"
    stats = result["stats"]
    assert stats["chunks"] == CHUNKS and stats["lastChunk"] == CHUNKS - 1
    assert stats["framesReceived"] == FRAMES == stats["framesDrawn"]
    assert stats["done"] == "finished"
    assert result["framesDrawnAttr"] == str(stats["framesDrawn"])
    assert (result["canvas"]["width"], result["canvas"]["height"]) == (WIDTH, HEIGHT)
    assert result["canvas"]["lumaStd"] > 1 and result["canvas"]["colours"] > 10, result["canvas"]
    assert f"frames {stats['framesDrawn']}/{FRAMES}" in result["readout"]
    assert any("[sf_preview] ready" in line for line in result["console"])
    assert not result["errors"], result["errors"]
    print(f"\nbrowser: UI ready {result['uiReadyMs']} ms, stream+playback {result['streamMs']} ms, "
          f"playback {result['playbackFps']:.1f} fps, blocked {len(result['blocked'])} outside requests")


def test_ui_workflows_are_the_api_workflows(comfy, models, browser_ready, tmp_path):
    """Each workflows/<name>.json (UI format) holds the same nodes and widget values as workflows/api/<name>.json."""
    result = node_script("api_to_ui.mjs", comfy.base_url, str(tmp_path), *map(str, API_WORKFLOWS))
    assert not result["errors"], result["errors"]
    assert sorted(result["written"]) == [p.name for p in API_WORKFLOWS]
    if os.environ.get("SF_UPDATE_WORKFLOWS") == "1" and comfy.host.primary:
        for path in API_WORKFLOWS:
            shutil.copy(tmp_path / path.name, REPO / "workflows" / path.name)
    for path in API_WORKFLOWS:
        api = json.loads(path.read_text())
        for ui in (json.loads((tmp_path / path.name).read_text()), json.loads((REPO / "workflows" / path.name).read_text())):
            nodes = {str(n["id"]): n for n in ui["nodes"]}
            assert sorted(n["type"] for n in nodes.values()) == sorted(n["class_type"] for n in api.values())
            assert len(ui["links"]) == sum(isinstance(v, list) for n in api.values() for v in n["inputs"].values())
            for node_id, node in api.items():
                literals = [v for v in node["inputs"].values() if not isinstance(v, list)]
                widgets = nodes[node_id].get("widgets_values", [])  # nodes without widgets have none
                widgets = list(widgets.values()) if isinstance(widgets, dict) else widgets
                assert all(v in widgets for v in literals), (path.name, node_id, literals, widgets)


def test_live_control_reaches_only_the_tab_and_subgraph_node_that_runs_the_stream(comfy, browser_ready, tmp_path):
    """Two tabs with one workflow; tab A runs the streaming node inside a subgraph (executed as "<sub>:<id>")."""
    workflow = {"1": {"class_type": "SFPreviewTestPattern", "inputs": {
        "text": "tabs", "width": 64, "height": 48, "chunks": 400, "frames_per_chunk": 3, "fps": 8.0,
        "chunk_seconds": 0.15}}}
    path = tmp_path / "control.json"
    path.write_text(json.dumps(workflow))
    result = node_script("control.mjs", comfy.base_url, str(path), str(tmp_path))
    assert "failure" not in result, result["failure"]
    assert result["locator"] == f"{result['subgraphNode']}:1"
    tab_b = result["tabB"]
    assert tab_b["chunks"] == 0 and "no stream from this tab" in tab_b["readout"]
    assert tab_b["foreignStatus"] == 409 and result["stillStreamingAfterTabB"]
    tab_a = result["tabA"]
    assert tab_a["streamNode"] == result["locator"] and tab_a["stats"]["done"] == "stopped"
    assert 3 <= tab_a["stats"]["chunks"] < 400 and tab_a["stats"]["framesDrawn"] == tab_a["stats"]["framesReceived"]
    assert not tab_a["animating"], "the player keeps animating while idle"
    assert tab_a["stats"]["maxQueued"] <= tab_a["maxQueuedFrames"]
    assert not result["errors"], result["errors"]


def test_a_graph_saved_with_the_legacy_widget_values_loads_and_runs(comfy, models, browser_ready):
    """tests/e2e/data/legacy_t2v_stream.json: workflows/t2v_stream.json as shipped before the explicit choices
    (chunk_frames / steps / cache_window 0, cache_sink -1), shrunk to 32×32 and 2 chunks."""
    result = node_script("legacy.mjs", comfy.base_url, str(Path(__file__).parent / "data" / "legacy_t2v_stream.json"))
    assert "failure" not in result, result["failure"]
    sent = result["sent"]
    assert {k: sent[k] for k in ("chunk_frames", "steps", "cache_window", "cache_sink")} in (
        {"chunk_frames": 0, "steps": 0, "cache_window": 0, "cache_sink": -1},  # the frontend keeps old values
        {k: "checkpoint" for k in ("chunk_frames", "steps", "cache_window", "cache_sink")})  # or maps them
    assert result["outcome"]["status"] == "success", result["outcome"]
    report = next(o["text"][0] for o in result["outcome"]["outputs"].values() if "text" in o)
    assert report.startswith("finished: 2/2 chunks"), report
    assert not result["errors"], result["errors"]
