"""Bad input in the real ComfyUI server: one readable error on the node, never a silently wrong video
(docs/reliability.md)."""
from __future__ import annotations

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from e2e.test_stream_nodes import error_message, run, workflow
from e2e.tiny_files import DIT_SAFETENSORS

pytestmark = pytest.mark.e2e


def test_nan_weights_stop_the_stream_with_their_cause(comfy, models):
    good = models[DIT_SAFETENSORS]
    sd = load_file(str(good))
    sd["head.head.weight"] = sd["head.head.weight"].clone().fill_(float("nan"))
    save_file(sd, str(good.parent / "nan_weights.safetensors"), safe_open(str(good), "pt").metadata())
    graph = workflow("t2v_stream")
    graph["1"]["inputs"]["model_name"] = "nan_weights.safetensors"
    _, messages = run(comfy, graph)
    message = error_message(messages)
    assert "chunk 0 holds NaN/Inf: the model nan_weights.safetensors has non-finite values in 'head.head.weight'" \
        in message, message
