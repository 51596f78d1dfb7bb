"""Safe defaults, each on the real thing: the address the app binds, the share link, what
/gradio_api/file= serves, where weights come from, the gradio pin, how long uploads live, and
what the app logs."""

from __future__ import annotations

import base64
import fnmatch
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.conftest import ROOT, free_port
from tests.media_factory import make_corrupt_file, make_image

sys.path.insert(0, str(ROOT))
import app  # noqa: E402

QUICK = dict(temperature=1.0, top_p=1.0, top_k=0, seed=0, max_tiles=2, max_new_tokens=4)


# ---------------------------------------------------------------------------------------------
# Address and share link


def test_binds_loopback_and_shares_nothing_unless_told(monkeypatch):
    for name in ("EAGLE_HOST", "GRADIO_SERVER_NAME", "EAGLE_SHARE"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and args.share is False
    assert app.parse_args(["--host", "0.0.0.0", "--share"]).host == "0.0.0.0"


def test_the_running_app_listens_on_loopback_only_without_a_share_link(app_server):
    port = int(app_server.url.rstrip("/").rsplit(":", 1)[1])
    listening = [c.laddr for c in psutil.Process().net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening and all(address.ip == "127.0.0.1" for address in listening)
    assert app_server.demo.share is False and app_server.demo.share_url is None


# ---------------------------------------------------------------------------------------------
# /gradio_api/file=


def test_file_route_serves_uploads_and_nothing_else(app_server, tiny_checkpoint, tmp_path):
    from eagle_demo.records import process_folder

    upload = httpx.post(app_server.url + "gradio_api/upload",
                        files={"files": ("photo.png", make_image(tmp_path / "photo.png").read_bytes())})
    uploaded = upload.json()[0]
    served = httpx.get(app_server.url + "gradio_api/file=" + uploaded)
    assert served.status_code == 200 and served.content == (tmp_path / "photo.png").read_bytes()

    (process_folder() / "outputs").mkdir(parents=True, exist_ok=True)
    own_output = process_folder() / "outputs" / "not-returned-by-the-app.json"
    own_output.write_text("{}")
    gradio_dir = str(Path(uploaded).parent.parent)
    attempts = [
        "/etc/passwd", "%2Fetc%2Fpasswd", "..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "../../../../etc/passwd",
        f"{gradio_dir}/..%2F..%2F..%2Fetc%2Fpasswd", f"{gradio_dir}/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
        str(ROOT / "app.py"), str(ROOT / "eagle_demo" / "engine.py"), "app.py", "README.md",
        str(tiny_checkpoint / "model.safetensors"), str(own_output), "file:///etc/passwd", "~/.bashrc",
        f"{app_server.url}gradio_api/file={uploaded}", "http://169.254.169.254/latest/meta-data/",
    ]
    for attempt in attempts:
        response = httpx.get(app_server.url + "gradio_api/file=" + attempt)
        assert response.status_code != 200, attempt
        assert b"root:" not in response.content


def test_an_uploaded_html_page_is_served_as_a_download_not_a_page(app_server):
    page = b"<html><script>alert(document.cookie)</script></html>"
    uploaded = httpx.post(app_server.url + "gradio_api/upload", files={"files": ("page.html", page)}).json()[0]
    served = httpx.get(app_server.url + "gradio_api/file=" + uploaded)
    assert served.status_code == 200 and served.content == page
    assert "html" not in served.headers["content-type"]
    assert served.headers["content-disposition"].startswith("attachment")


# ---------------------------------------------------------------------------------------------
# Code and weights


def tracked_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in names.splitlines() if (ROOT / name).is_file()]


def test_no_remote_code_anywhere_in_the_tree():
    needle = "trust_remote" + "_code"  # in pieces, so that this file does not hold it
    holders = [str(p.relative_to(ROOT)) for p in tracked_files() if needle.encode() in p.read_bytes()]
    assert not holders


def test_hub_downloads_take_only_configs_safetensors_and_tokenizer_files():
    from eagle_demo.model.loading import HUB_FILES

    def fetched(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in HUB_FILES)

    assert fetched("config.json") and fetched("model-00001-of-00002.safetensors") and fetched("merges.txt")
    for name in ("pytorch_model.bin", "model.pt", "modeling_eagle2.py", "configuration_eagle.py", "model.ckpt"):
        assert not fetched(name), name


def test_a_checkpoint_with_only_pickled_weights_is_refused(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file

    from eagle_demo.engine import Engine

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "model.safetensors").unlink()
    torch.save(load_file(tiny_checkpoint / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="neither model.safetensors nor model.safetensors.index.json"):
        Engine(str(folder), device="cpu").load()


def test_the_loader_never_unpickles(tiny_checkpoint, tmp_path, monkeypatch):
    """torch.load (pickle) could run code from a weights file: loading never calls it, even with a
    pytorch_model.bin lying next to the safetensors."""
    from eagle_demo.engine import Engine

    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    folder = tmp_path / "both"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    engine = Engine(str(folder), device="cpu")
    engine.load()
    assert engine.model is not None and calls == []


# ---------------------------------------------------------------------------------------------
# The gradio pin


def test_gradio_is_pinned_and_the_pin_is_what_runs():
    requirements = (ROOT / "requirements.txt").read_text()
    pins = re.findall(r"^gradio==(\S+)", requirements, re.MULTILINE)
    assert len(pins) == 1
    assert importlib.metadata.version("gradio") == pins[0]
    readme = (ROOT / "README.md").read_text()
    assert f"sdk_version: {pins[0]}\n" in readme  # what Spaces installs


def test_the_app_runs_without_ssr_and_run_history(app_server):
    # the two together expose gradio 6.27-6.31 to CVE-2026-134825 (see requirements.txt)
    assert app_server.demo.ssr_mode is False and app_server.demo.run_history is False


# ---------------------------------------------------------------------------------------------
# Uploads' lifetime and logs, on `python app.py` itself


@pytest.fixture(scope="module")
def served_app(tiny_checkpoint, tmp_path_factory):
    """`python app.py` with uploads kept for 5 s, its temporary folders in a folder of its own and
    its output (stdout and stderr) in a file."""
    tmp = tmp_path_factory.mktemp("served")
    port = free_port()
    log = open(tmp / "output.txt", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", str(tiny_checkpoint), "--port", str(port),
                             "--delete-uploads-after", str(5 / 3600)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio")})
    url = f"http://127.0.0.1:{port}/"
    end = time.monotonic() + 60
    while True:
        assert proc.poll() is None and time.monotonic() < end, (tmp / "output.txt").read_text()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield url, tmp, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_uploads_and_generated_files_are_deleted_after_the_configured_time(served_app, tmp_path):
    url, tmp, _ = served_app
    image = make_image(tmp_path / "holiday.png").read_bytes()
    uploaded = Path(httpx.post(url + "gradio_api/upload", files={"files": ("holiday.png", image)}).json()[0])
    assert uploaded.is_file()
    client = Client(url, verbose=False, analytics_enabled=False)
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]
    served_copy = Path(client.predict(history, api_name="/export"))  # downloaded by the client
    client.close()
    exports = list(tmp.glob(f"eagle2-demo-*/**/{served_copy.name}"))  # the app's own file
    assert exports
    end = time.monotonic() + 30
    while (uploaded.exists() or any(p.exists() for p in exports)) and time.monotonic() < end:
        time.sleep(0.2)
    assert not uploaded.exists() and not any(p.exists() for p in exports)
    assert not [p for p in (tmp / "gradio").rglob(served_copy.name) if p.is_file()]  # gradio's copy too


def _ask_with_marker(url: str, marker: str, folder: Path) -> None:
    """A normal question, a broken upload and a refused request, each carrying the marker."""
    client = Client(url, verbose=False, analytics_enabled=False)
    image = make_image(folder / f"photo-{marker}.png")
    assert client.predict(f"Describe {marker}", [handle_file(str(image))], system=f"You are {marker}.", **QUICK,
                          api_name="/chat")
    broken = make_corrupt_file(folder / f"scan-{marker}.jpg")
    with pytest.raises(AppError):
        client.predict(f"Read {marker}", [handle_file(str(broken))], **QUICK, api_name="/chat")
    with pytest.raises(AppError):
        client.predict(f"{marker} " * 3000, **QUICK, api_name="/chat")
    client.close()
    # the same through /v1: an answer, then requests it refuses
    v1, quick = url + "v1/chat/completions", {"max_tokens": 4, "mm_processor_kwargs": {"max_dynamic_patch": 1}}

    def user(text: str, path: Path) -> list[dict]:
        url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": text}]}]

    ok = httpx.post(v1, json={"messages": [{"role": "system", "content": f"You are {marker}."},
                                           *user(f"Describe {marker}", image)], **quick}, timeout=60)
    assert ok.status_code == 200, ok.text
    for refused in ({"messages": user(f"Read {marker}", broken)},
                    {"messages": [{"role": "user", "content": f"{marker} " * 3000}]},
                    {"messages": [{"role": marker, "content": "Hi"}]},
                    {"messages": user("Hi", image), "temperature": marker},
                    {"messages": user("Hi", image), marker: True, f"x{marker}": 1, "user": marker}):
        assert httpx.post(v1, json={**quick, **refused}, timeout=60).status_code in (200, 400, 413)


def test_no_user_content_in_the_output_of_python_app_py(served_app, tmp_path):
    url, tmp, _ = served_app
    # the model loads first: this app deletes uploads 5 s old, and a load on a busy machine took longer,
    # so the question's photo was gone when it was read (a clear refusal, but not the path under test)
    Client(url, verbose=False, analytics_enabled=False).predict("Hi", **QUICK, api_name="/chat")
    marker = uuid.uuid4().hex
    _ask_with_marker(url, marker, tmp_path)
    time.sleep(0.5)  # let the server write whatever it would
    output = (tmp / "output.txt").read_text()
    assert marker not in output


def test_no_user_content_in_any_log_record(app_server, tmp_path, caplog):
    marker = uuid.uuid4().hex
    with caplog.at_level(logging.DEBUG):
        _ask_with_marker(app_server.url, marker, tmp_path)
    assert caplog.records  # the capture works: the client's own requests are logged
    assert not [r for r in caplog.records if marker in r.getMessage()]
