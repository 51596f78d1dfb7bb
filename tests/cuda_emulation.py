"""CPU stand-ins for the CUDA contracts the engine relies on, for a machine without a GPU.

- `fused_attention_layout`: `F.scaled_dot_product_attention` returns what CUDA's flash,
  memory-efficient and cuDNN kernels return: a (B, H, L, D) view of a contiguous (B, L, H, D)
  buffer, where CPU kernels return a contiguous (B, H, L, D) tensor.
- `cuda_graphs`: torch.cuda's stream and graph API on CPU. Capture records every aten op the step
  runs; replay re-runs them in order into the same output tensors (static addresses), so Python
  logic inside a captured step is frozen at capture, as on a GPU. The capture's own outputs are
  garbage afterwards (a GPU does not run kernels while capturing). A host read (`item()`, `int()`,
  `nonzero`) while capturing invalidates the capture and `capture_end` raises, as CUDA does; the
  `graph` context mirrors `torch.cuda.graph`, whose exit then never restores the caller's stream.
  Capture modes as `cudaStreamCaptureMode` has them: in "global" mode (torch.cuda.graph's default)
  another thread's potentially unsafe call, such as the cudaMalloc of a model loading, fails in
  that thread and invalidates the capture; in "thread_local" mode other threads are not checked.
  `during_capture`, when set, is another thread's device work, run while each capture is underway;
  every allocation it makes counts as a cudaMalloc.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
HOST_READS = {aten.item, aten._local_scalar_dense, aten.nonzero, aten.masked_select}


def fused_attention_layout(monkeypatch) -> None:
    contiguous = F.scaled_dot_product_attention

    def like_cuda(*args, **kwargs):
        out = contiguous(*args, **kwargs)  # (B, H, L, D)
        return out.transpose(1, 2).contiguous().transpose(1, 2)

    monkeypatch.setattr(F, "scaled_dot_product_attention", like_cuda)


class HostReadCounter(TorchDispatchMode):
    """Counts the ops that make the host wait for the device, and where they fall among the others."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append("HOST_READ" if func.overloadpacket in HOST_READS else func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


class _Recorder(TorchDispatchMode):
    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.ops: list = []
        self.host_read: str | None = None
        self.invalidated_by: str | None = None  # another thread's unsafe call, in global mode

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in HOST_READS:
            self.host_read = str(func)
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        out = func(*args, **kwargs)
        if not func.is_view:  # a view aliases storage that the ops around it refresh
            self.ops.append((func, args, kwargs, out))
        return out


class FakeCUDAGraph:
    def __init__(self):
        self._recorder: _Recorder | None = None
        self.replays = 0

    def capture_begin(self, pool=None, capture_error_mode="global"):
        self._recorder = _Recorder(capture_error_mode)
        self._recorder.__enter__()

    def capture_end(self):
        self._recorder.__exit__(None, None, None)
        if self._recorder.invalidated_by:
            raise RuntimeError(f"CUDA error: operation failed due to a previous error during capture "
                               f"({self._recorder.invalidated_by} in another thread)")
        if self._recorder.host_read:
            raise RuntimeError(f"CUDA error: operation failed due to a previous error during capture "
                               f"({self._recorder.host_read} read a value on the host)")
        for func, _, _, out in self._recorder.ops:  # nothing ran on the device while capturing
            if not func._schema.is_mutable:
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor) and t.is_floating_point():
                        t.fill_(float("nan"))

    def replay(self):
        for func, args, kwargs, out in self._recorder.ops:
            fresh = func(*args, **kwargs)
            if func._schema.is_mutable:  # wrote into its arguments again
                continue
            for static, value in zip(tree_leaves(out), tree_leaves(fresh)):
                if isinstance(static, torch.Tensor):
                    static.copy_(value)
        self.replays += 1

    def pool(self):
        return id(self)


ALLOCATIONS = {aten.empty, aten.empty_strided, aten.zeros, aten.ones, aten.full}


class _OtherThreadsWork(TorchDispatchMode):
    """Another thread's device work while `capture` is underway: its allocations are cudaMalloc calls."""

    def __init__(self, capture: _Recorder):
        super().__init__()
        self.capture = capture

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in ALLOCATIONS and self.capture.mode == "global":
            self.capture.invalidated_by = "cudaMalloc"
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        return func(*args, **(kwargs or {}))


def _run_beside(capture: _Recorder, work, errors: list) -> None:
    def run():
        try:
            with _OtherThreadsWork(capture):
                work()
        except RuntimeError as e:
            errors.append(str(e))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()


class FakeStream:
    def __init__(self, device=None, priority=0):
        self.device = device

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass


def install_cuda_graphs(monkeypatch) -> SimpleNamespace:
    """Patch torch.cuda's graph and stream API with the CPU stand-ins; returns what tests inspect."""
    default = FakeStream()
    local = threading.local()
    graphs: list[FakeCUDAGraph] = []
    fake = SimpleNamespace(default_stream=default, graphs=graphs, during_capture=None, other_thread_errors=[])

    def current_stream(device=None):
        return getattr(local, "stream", default)

    class stream:  # noqa: N801 - torch.cuda.stream's name
        def __init__(self, s):
            self.s = s

        def __enter__(self):
            self.previous = current_stream()
            if self.s is not None:
                local.stream = self.s

        def __exit__(self, *exc):
            local.stream = self.previous

    class graph:  # noqa: N801 - mirrors torch.cuda.graph, including what its exit skips on failure
        default_capture_stream = None

        def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="global"):
            if stream is None and graph.default_capture_stream is None:
                graph.default_capture_stream = FakeStream()
            self.stream_ctx = stream_ctx(stream or graph.default_capture_stream)
            self.cuda_graph, self.pool, self.mode = cuda_graph, pool, capture_error_mode

        def __enter__(self):
            self.stream_ctx.__enter__()
            self.cuda_graph.capture_begin(self.pool, capture_error_mode=self.mode)
            if fake.during_capture is not None:
                _run_beside(self.cuda_graph._recorder, fake.during_capture, fake.other_thread_errors)

        def __exit__(self, *exc):
            self.cuda_graph.capture_end()
            self.stream_ctx.__exit__(*exc)

    stream_ctx = stream

    class device:  # noqa: N801
        def __init__(self, device):
            self.index = device

        def __enter__(self):
            pass

        def __exit__(self, *exc):
            pass

    def new_graph():
        g = FakeCUDAGraph()
        graphs.append(g)
        return g

    for name, value in dict(CUDAGraph=new_graph, graph=graph, Stream=FakeStream, stream=stream,
                            current_stream=current_stream, device=device, synchronize=lambda device=None: None,
                            empty_cache=lambda: None).items():
        monkeypatch.setattr(torch.cuda, name, value)
    fake.current_stream = current_stream
    return fake
