"""The extension loads into a real ComfyUI server and a workflow with its diagnostics node runs."""
import pytest

from e2e.hosts import in_core_tree

pytestmark = pytest.mark.e2e


def test_extension_nodes_are_registered(comfy):
    info = comfy.object_info()
    for node_type in ("SFEnvironmentInfo", "SFPreviewTestPattern"):
        assert node_type in info, f"{node_type} missing from /object_info; see the server log"
        assert in_core_tree(info[node_type]["category"], info), (node_type, info[node_type]["category"])
    assert info["SFEnvironmentInfo"]["display_name"] == "SF Environment Info"


def test_web_extension_is_served(comfy):
    scripts = comfy.get_json("/extensions")
    ours = [path for path in scripts if "comfyui_self_forcing" in path]
    assert any(path.endswith("/sf_preview.js") for path in ours), scripts
    status, body = comfy.request("GET", ours[0])
    assert status == 200 and "registerExtension" in body


def test_environment_info_workflow_runs(comfy):
    prompt_id = comfy.post_prompt({"1": {"class_type": "SFEnvironmentInfo", "inputs": {}}})
    messages = comfy.wait_for(prompt_id)
    assert messages[-1].type == "execution_success", messages[-1]
    report = comfy.history(prompt_id)["outputs"]["1"]["text"][0]
    facts = dict(line.split(" : ", 1) for line in report.splitlines())
    facts = {key.strip(): value for key, value in facts.items()}
    stats = comfy.get_json("/system_stats")
    assert facts["torch"] == stats["system"]["pytorch_version"]
    assert facts["comfy device"] == "cpu"
    assert facts["sf_core"] != "missing"  # the package is importable inside the server
