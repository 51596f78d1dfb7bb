"""The model menu over HTTP: two models and two clients alternating, with the loads and unloads the
policy says (models/ModelMenu); two models loading at the same time in one process."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from gradio_client import Client
from safetensors.torch import load_file
from torch import nn

from eagle_demo.model import load_eagle2
from eagle_demo.tiny import write_tiny_checkpoint
from tests.conftest import ROOT, free_port

QUICK = dict(temperature=1.0, top_p=1.0, top_k=0, seed=0, max_tiles=1, max_new_tokens=6)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("menu")
    return [str(write_tiny_checkpoint(root / name, layout="eagle_2_5_vl", seed=seed))
            for seed, name in enumerate(["first-eagle", "second-eagle"])]


def serve(models: list[str], *flags: str):
    sys.path.insert(0, str(ROOT))
    import app

    port = free_port()
    demo, menu, launch = app.build(app.parse_args(["--model", ",".join(models), "--port", str(port),
                                                   "--concurrency", "2", *flags]))
    demo.launch(prevent_thread_lock=True, quiet=True, **launch)
    return demo, menu, f"http://127.0.0.1:{port}/"


def alternate(url: str, models: list[str], requests: int = 20) -> list[str]:
    """Two clients, one per model, each asking in turn, both at once."""
    def client_loop(model):
        client = Client(url, verbose=False, analytics_enabled=False)
        return [client.predict(f"Hello {i}", model=model, **QUICK, api_name="/chat")
                for i in range(requests // 2)]

    with ThreadPoolExecutor(2) as pool:
        answers = [a for result in pool.map(client_loop, models) for a in result]
    return answers


@pytest.mark.parametrize("max_models", [0, 1])
def test_two_clients_on_two_models_are_all_answered(two_models, max_models):
    demo, menu, url = serve(two_models, "--max-models", str(max_models))
    try:
        assert menu.names == ["first-eagle", "second-eagle"]  # folder names: no server path is shown
        for name in menu.names:  # what page loads and menu changes show: it loads nothing
            assert "not loaded" in menu.status(name)
        assert menu.loaded() == [] and not menu.loads
        answers = alternate(url, menu.names)
        assert len(answers) == 20 and all(isinstance(a, str) for a in answers)
        if max_models == 0:  # both fit in memory: each loads once and stays
            assert dict(menu.loads) == {m: 1 for m in menu.names} and not menu.unloads
            assert sorted(menu.loaded()) == menu.names
        else:  # one at a time: every switch unloads the idle other, never one that is answering
            assert sum(menu.loads.values()) == sum(menu.unloads.values()) + 1
            assert len(menu.loaded()) == 1
    finally:
        demo.close()


def test_two_models_load_at_the_same_time_and_others_build_modules_meanwhile(two_models):
    stop = threading.Event()
    meta_seen = []

    def build_modules():  # another thread's modules must get real parameters throughout
        while not stop.is_set():
            layer = nn.Linear(4, 4)
            meta_seen.append(layer.weight.is_meta)

    builder = threading.Thread(target=build_modules)
    builder.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            models = list(pool.map(lambda path: load_eagle2(path), two_models * 3))
    finally:
        stop.set()
        builder.join()
    assert meta_seen and not any(meta_seen)
    assert not nn.Linear(2, 2).weight.is_meta
    for path, model in zip(two_models * 3, models):
        stored = load_file(f"{path}/model.safetensors")
        assert torch.equal(model.mlp1[1].weight, stored["mlp1.1.weight"])
        assert torch.equal(model.language_model.model.norm.weight, stored["language_model.model.norm.weight"])
        assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_loading_progress_names_the_model_never_its_folder(two_models):
    from eagle_demo.models import ModelMenu

    menu = ModelMenu(two_models[:1], device="cpu")
    texts = []
    with menu.use(menu.names[0], lambda fraction, text: texts.append(text)):
        pass
    assert texts and any("first-eagle" in t for t in texts)
    assert not any(two_models[0] in t or "/" in t for t in texts), texts


def test_the_zerogpu_time_counts_a_new_workers_start_the_tiles_and_eager_tokens(two_models):
    """What an answer asks of ZeroGPU: a new worker first moves every loaded model's weights and KV
    cache to the GPU; each tile or frame takes its time; tokens decode at an eager pace; never more
    than ZeroGPU accepts."""
    from eagle_demo.models import EAGER_STEP_S, MAX_GPU_SECONDS, MOVE_BYTES_PER_S, GpuTime, ModelMenu

    menu = ModelMenu(two_models, device="cpu")
    first, second = menu.names
    menu.model(first).load()
    alone = GpuTime.of(menu, first, 100, tiles=0)
    menu.preload()
    both = GpuTime.of(menu, first, 100, tiles=0)
    other = menu.model(second)
    cache = other.decoder.cache
    moved = other.weight_bytes() + sum(t.numel() * t.element_size() for t in (*cache.k, *cache.v))
    assert both.worker_start - alone.worker_start == pytest.approx(moved / MOVE_BYTES_PER_S)
    assert GpuTime.of(menu, first, 100, tiles=13).media > both.media == 0
    assert both.decode >= 100 * EAGER_STEP_S
    assert menu.gpu_seconds(first, 100, 13) == GpuTime.of(menu, first, 100, tiles=13).seconds
    assert menu.gpu_seconds(first, 4096, 13 * 20) == MAX_GPU_SECONDS
