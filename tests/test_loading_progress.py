"""What a load tells while it runs: the download's bytes, the weights shard by shard, the decoder.

The download runs huggingface_hub's own code against a small local server that answers the Hub
endpoints snapshot_download calls (huggingface_hub 2.x, _snapshot_download.py and file_download.py):
GET /api/models/{id}/revision/{rev} (the commit), GET /api/models/{id}/tree/{commit} (the listing,
with sizes), then per file HEAD and GET /{id}/resolve/{commit}/{file} (X-Repo-Commit, ETag and
Content-Length). huggingface_hub reads HF_ENDPOINT and HF_HOME when imported, so that part runs in a
fresh process.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

from eagle_demo.model import load_eagle2
from eagle_demo.model.loading import HUB_FILES, weight_files
from eagle_demo.models import ModelMenu
from eagle_demo.tiny import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
REPO = "eagle-demo-tests/Eagle2-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHARD_DELAY = 0.4  # seconds the fake Hub waits before each weights file, one at a time


def loading_stages(shards: int) -> list[tuple[float, str]]:
    """What a load of a local `Eagle2-tiny` in `shards` files tells, after any download."""
    if shards == 1:
        weights = [(0.3, "loading Eagle2-tiny on cpu: one weights file")]
    else:
        weights = [(0.3 + 0.5 * i / shards, f"loading Eagle2-tiny on cpu: shard {i + 1} of {shards}")
                   for i in range(shards)]
    return [(0.3, "loading Eagle2-tiny on cpu…"), *weights, (0.8, "preparing the decoder…"),
            (1.0, "ready: Eagle2-tiny on cpu")]


def assert_told(told: list[tuple[float, str]], expected: list[tuple[float, str]]) -> None:
    assert [text for _, text in told] == [text for _, text in expected]
    assert [fraction for fraction, _ in told] == pytest.approx([fraction for fraction, _ in expected])


@pytest.mark.parametrize("shards", [1, 3])
def test_a_local_checkpoint_tells_each_shard_then_the_decoder_and_no_download(tmp_path, shards):
    path = write_tiny_checkpoint(tmp_path / "Eagle2-tiny", shards=shards)
    menu = ModelMenu([str(path)], device="cpu")
    told = []
    with menu.use("Eagle2-tiny", lambda fraction, text: told.append((fraction, text))):
        pass
    assert_told(told, loading_stages(shards))
    assert not any(str(tmp_path) in text or "/" in text for _, text in told)


def test_tiny_shards_are_the_hub_layout_and_the_same_weights(tmp_path):
    sharded = write_tiny_checkpoint(tmp_path / "sharded", "eagle_chat", mob=True, shards=4)
    single = write_tiny_checkpoint(tmp_path / "single", "eagle_chat", mob=True)
    assert [f.name for f in weight_files(sharded)] == [f"model-0000{k}-of-00004.safetensors" for k in (1, 2, 3, 4)]
    assert not (sharded / "model.safetensors").exists()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] > 0 and len(set(index["weight_map"].values())) == 4
    a, b = load_eagle2(sharded).state_dict(), load_eagle2(single).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="shards must be"):
        write_tiny_checkpoint(tmp_path / "bad", shards=10_000)


# --- the download, through a local server that answers as the Hub does -------------------------

class FakeHub(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}  # path in the repo -> content
    weights_lock = threading.Lock()  # weights files go one at a time, SHARD_DELAY apart

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body: bool):
        path = unquote(urlsplit(self.path).path)
        api = f"/api/models/{REPO}/"
        if path == api + "revision/main":
            return self.send(json.dumps({"id": REPO, "sha": COMMIT, "private": False,
                                         "siblings": [{"rfilename": name} for name in self.files]}).encode(), body)
        if path == api + f"tree/{COMMIT}":
            listing = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                       for name, data in self.files.items()]
            return self.send(json.dumps(listing).encode(), body)
        resolve = f"/{REPO}/resolve/{COMMIT}/"
        if path.startswith(resolve) and path[len(resolve):] in self.files:
            data = self.files[path[len(resolve):]]
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
            if body and path.endswith(".safetensors"):
                with self.weights_lock:
                    time.sleep(SHARD_DELAY)
                    return self.send(data, body, headers)
            return self.send(data, body, headers)
        self.send(b'{"error": "Repository not found"}', body, {"X-Error-Code": "RepoNotFound"}, status=404)

    def send(self, data: bytes, body: bool, headers: dict | None = None, status: int = 200):
        self.send_response(status)
        for name, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(tmp_path):
    """The URL of a Hub that serves REPO: a small checkpoint in 3 shards, and files no load fetches."""
    checkpoint = write_tiny_checkpoint(tmp_path / "served", size="small", shards=3)
    FakeHub.files = {f.name: f.read_bytes() for f in checkpoint.iterdir()}
    FakeHub.files.update({"README.md": b"#" * 500_000, "modeling_eagle2.py": b"raise SystemExit\n"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


LOAD_TWICE = """
import json, sys, time
from eagle_demo.models import ModelMenu

for run in range(2):  # downloading, then from the cache
    menu = ModelMenu([sys.argv[1]], device="cpu")
    with menu.use(menu.names[0], lambda fraction, text: print(json.dumps([run, time.monotonic(), fraction, text]),
                                                              flush=True)):
        pass
"""


def test_a_download_tells_its_bytes_done_and_total_a_few_times_a_second(fake_hub, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": fake_hub, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # the bytes are counted even with the console bars off
           "NO_PROXY": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_TOKEN", None)
    result = subprocess.run([sys.executable, "-c", LOAD_TWICE, REPO], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [[], []]
    for line in result.stdout.splitlines():
        run, at, fraction, text = json.loads(line)
        runs[run].append((at, fraction, text))
    print("\n".join(f"{fraction:.3f}  {text}" for run in runs for _, fraction, text in run))

    total = sum(len(data) for name, data in FakeHub.files.items() if any(fnmatch(name, p) for p in HUB_FILES))
    for run, told in enumerate(runs):
        fractions = [fraction for _, fraction, _ in told]
        assert fractions == sorted(fractions)
        assert told[0][1:] == (0.05, "fetching Eagle2-tiny: asking the Hub")
        downloads = [(at, fraction, re.fullmatch(r"fetching Eagle2-tiny: ([\d.]+) of ([\d.]+) MB downloaded", text))
                     for at, fraction, text in told[1:] if text.startswith("fetching")]
        assert all(match for _, _, match in downloads), told
        assert_told([(fraction, text) for _, fraction, text in told[1 + len(downloads):]], loading_stages(3))
        assert not any("/" in text for _, _, text in told)
        if run == 1:  # all in the cache
            assert downloads == []
            continue
        done = [float(match[1]) for _, _, match in downloads]
        assert len(downloads) >= 3 and done == sorted(done) and done[0] < done[-1]  # several, shard by shard
        assert {float(match[2]) for _, _, match in downloads} == {round(total / 1e6, 1)}  # known from the start
        assert done[-1] == round(total / 1e6, 1) and downloads[-1][1] == pytest.approx(0.3)
        gaps = [b[0] - a[0] for a, b in zip(downloads, downloads[1:-1])]  # the last one comes when all are in
        assert min(gaps, default=1.0) >= 0.2, gaps  # a few a second at most (REPORT_EVERY, less some jitter)
