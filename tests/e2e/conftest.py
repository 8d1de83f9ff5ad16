"""End-to-end harness: a real ComfyUI server with this repository installed as a custom node.

Install once with `scripts/install_comfyui.sh` (and `scripts/install_comfyui_current.sh` where the shared
folder is present), then run the e2e tests with the venv it creates:

    .cache/comfy-venv/bin/python -m pytest tests/e2e -m e2e

Every test that uses the `comfy` server runs once per host (`e2e/hosts.py`: ComfyUI 0.3.75 always, the current
ComfyUI from `../shared/hosts` when present, and that one with frontend 1.58.1 in Vue-node mode for the browser
tests); the test id names the host. The server runs on the host venv's python; the test process only needs
`websocket-client`. A host that is not installed skips its tests with a message.
Server logs and screenshots go to `SF_E2E_ARTIFACTS` (default `.cache/e2e-artifacts`).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from e2e.hosts import Host, all_hosts

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("SF_E2E_ARTIFACTS", REPO / ".cache" / "e2e-artifacts"))
PACKAGE_NAME = "comfyui_self_forcing"
MODEL_FOLDERS = ("diffusion_models", "vae", "text_encoders", "vae_approx")
TERMINAL = ("execution_success", "execution_error", "execution_interrupted")
STARTUP_TIMEOUT_S = 180


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: needs a real ComfyUI server (scripts/install_comfyui.sh)")


def _missing_requirement(host: Host | None) -> str | None:
    if host is not None and (reason := host.missing()):
        return reason
    try:
        import websocket  # noqa: F401
    except ImportError:
        return "websocket-client missing; run the e2e tests with .cache/comfy-venv/bin/python -m pytest tests/e2e"
    return None


def pytest_generate_tests(metafunc):
    """Run every test that needs a server once per host; browser-only hosts get only the browser tests."""
    if "comfy" not in metafunc.fixturenames:
        return
    browser = "browser_ready" in metafunc.fixturenames
    hosts = [h for h in all_hosts() if browser or not h.browser_only]
    metafunc.parametrize("comfy_host", hosts, ids=[h.id for h in hosts], indirect=True, scope="session")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)
            callspec = getattr(item, "callspec", None)
            if reason := _missing_requirement(callspec.params.get("comfy_host") if callspec else None):
                item.add_marker(pytest.mark.skip(reason=reason))


@dataclass
class Message:
    """One websocket message: JSON ones as (type, data dict), binary ones as type 'binary:<id>'."""
    time: float
    type: str
    data: dict | bytes

    @property
    def prompt_id(self):
        return self.data.get("prompt_id") if isinstance(self.data, dict) else None


class PromptRejected(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(f"HTTP {status}: {json.dumps(body)[:2000]}")
        self.status, self.body = status, body


@dataclass
class ComfyClient:
    base_url: str
    base_dir: Path
    log_path: Path
    host: Host | None = None
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    startup_seconds: float = 0.0
    messages: list[Message] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    # --- HTTP -----------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 30):
        """(status, parsed JSON or text) for a request to the server; never raises on HTTP errors."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def get_json(self, path: str):
        status, body = self.request("GET", path)
        assert status == 200, f"GET {path} -> {status}: {body}"
        return body

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def history(self, prompt_id: str, timeout: float = 30) -> dict:
        """The prompt's history entry; waits for it (the server stores it just after the terminal message)."""
        deadline = time.time() + timeout
        while True:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None or time.time() > deadline:
                return entry or {}
            time.sleep(0.05)

    def interrupt(self) -> None:
        status, body = self.request("POST", "/interrupt", {})
        assert status == 200, f"/interrupt -> {status}: {body}"

    def post_prompt(self, graph: dict) -> str:
        """Queue an API-format graph; returns its prompt_id. Raises PromptRejected (with node_errors)."""
        status, body = self.request("POST", "/prompt", {"prompt": graph, "client_id": self.client_id})
        if status != 200:
            raise PromptRejected(status, body if isinstance(body, dict) else {"text": body})
        return body["prompt_id"]

    # --- websocket --------------------------------------------------------------------------------
    def _listen(self, ws) -> None:
        import websocket

        while True:
            try:
                opcode, payload = ws.recv_data()
            except (websocket.WebSocketException, OSError):
                return
            now = time.time()
            if opcode == websocket.ABNF.OPCODE_TEXT:
                parsed = json.loads(payload)
                message = Message(now, parsed.get("type", "?"), parsed.get("data") or {})
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                message = Message(now, f"binary:{int.from_bytes(payload[:4], 'big')}", payload[4:])
            else:
                continue
            with self._cond:
                self.messages.append(message)
                self._cond.notify_all()

    def connect(self) -> None:
        import websocket

        ws = websocket.create_connection(
            self.base_url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}", timeout=None)
        threading.Thread(target=self._listen, args=(ws,), daemon=True).start()
        self.wait_until(lambda m: m.type == "status", timeout=30)

    def wait_until(self, predicate, timeout: float = 120, start: int = 0) -> Message:
        """First message (from index `start`) satisfying `predicate`; waits for it if needed."""
        deadline = time.time() + timeout
        with self._cond:
            index = start
            while True:
                while index < len(self.messages):
                    if predicate(self.messages[index]):
                        return self.messages[index]
                    index += 1
                left = deadline - time.time()
                if left <= 0:
                    recent = [(m.type, m.data if isinstance(m.data, dict) else len(m.data))
                              for m in self.messages[-10:]]
                    raise TimeoutError(f"no matching websocket message within {timeout} s; last: {recent}")
                self._cond.wait(left)

    def wait_for(self, prompt_id: str, timeout: float = 300) -> list[Message]:
        """All messages of one prompt, from `execution_start` to its terminal message (inclusive)."""
        end = self.wait_until(lambda m: m.type in TERMINAL and m.prompt_id == prompt_id, timeout)
        with self._cond:
            messages = list(self.messages)
        first = next(i for i, m in enumerate(messages)
                     if m.type == "execution_start" and m.prompt_id == prompt_id)
        return messages[first:messages.index(end) + 1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 120) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


@pytest.fixture(scope="session")
def comfy_host(request) -> Host:
    """The ComfyUI host of this test (parametrized by `pytest_generate_tests`)."""
    return request.param


@pytest.fixture(scope="session")
def artifacts_dir(comfy_host) -> Path:
    """Where e2e tests leave files for CI to keep (server log, screenshots), one folder per host."""
    folder = ARTIFACTS / comfy_host.id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _vue_nodes_on(client: ComfyClient) -> None:
    status, body = client.request("POST", "/settings/Comfy.VueNodes.Enabled", True)
    assert status == 200, f"enabling Vue nodes -> {status}: {body}"


@pytest.fixture(scope="session")
def comfy(request, comfy_host, artifacts_dir) -> ComfyClient:
    """A running ComfyUI server of `comfy_host` with this repository linked in as
    `custom_nodes/comfyui_self_forcing`."""
    base = Path(tempfile.mkdtemp(prefix="sf-comfy-"))
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACKAGE_NAME).symlink_to(REPO, target_is_directory=True)
    for folder in MODEL_FOLDERS:
        (base / "models" / folder).mkdir(parents=True)
    port = _free_port()
    log_path = base / "comfy.log"
    command = [str(comfy_host.venv / "bin" / "python"), "main.py", "--cpu", "--listen", "127.0.0.1",
               "--port", str(port), "--disable-auto-launch", "--dont-print-server", "--disable-api-nodes",
               "--database-url", "sqlite:///:memory:", "--base-directory", str(base)]
    if comfy_host.front_end_root is not None:
        command += ["--front-end-root", str(comfy_host.front_end_root)]
    started = time.time()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=comfy_host.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    client = ComfyClient(f"http://127.0.0.1:{port}", base, log_path, comfy_host)
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode} during startup:\n{_log_tail(log_path)}")
            if time.time() - started > STARTUP_TIMEOUT_S:
                pytest.fail(f"ComfyUI not ready after {STARTUP_TIMEOUT_S} s:\n{_log_tail(log_path)}")
            try:
                if client.request("GET", "/system_stats", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        client.startup_seconds = time.time() - started
        print(f"\nComfyUI {comfy_host.id} ready in {client.startup_seconds:.1f} s on port {port} (base {base})",
              file=sys.stderr)
        if comfy_host.vue_nodes:
            _vue_nodes_on(client)
        client.connect()
        yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.copy(log_path, artifacts_dir / "comfy_server.log")
        if request.session.testsfailed:
            print(f"\n===== ComfyUI server log (tail) =====\n{_log_tail(log_path)}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server log tail to every failing e2e test report."""
    outcome = yield
    report = outcome.get_result()
    client = getattr(item, "funcargs", {}).get("comfy")
    if report.failed and isinstance(client, ComfyClient):
        report.sections.append(("ComfyUI server log (tail)", _log_tail(client.log_path)))


@pytest.fixture(scope="session")
def models(comfy):
    """Tiny checkpoints in the real formats under the real Wan asset names in the server's model folders
    (tests/e2e/tiny_files.py), and a start image `sf_start.png` and a 26-frame video `sf_input.mp4` in its input folder."""
    import numpy as np
    from PIL import Image

    from e2e.tiny_files import write_input_video, write_tiny_models

    paths = write_tiny_models(comfy.base_dir / "models")
    (comfy.base_dir / "input").mkdir(exist_ok=True)
    gradient = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    Image.fromarray(gradient).save(comfy.base_dir / "input" / "sf_start.png")
    write_input_video(comfy.base_dir / "input" / "sf_input.mp4")
    return paths
