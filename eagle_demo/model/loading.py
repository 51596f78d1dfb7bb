"""Finding a checkpoint and loading its safetensors into `Eagle2Model`.

Checkpoint keys map one to one onto the model's, except the vision tower's inner prefix:
  1B/2B: vision_model.vision_model.X                                 -> vision_model.X
  9B:    vision_model.vision_model.vision_towers.{i}.vision_tower.vision_model.X -> vision_model.siglip.X
         vision_model.vision_model.vision_towers.{j}.vision_tower.X              -> vision_model.convnext.X
A tower's `head.*` (SigLIP pooling head, ConvNeXt classifier) is never used and is skipped.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .config import Eagle2Config
from .eagle2 import Eagle2Model
from .quantized import PER_WORD, Int4Linear, quantize_language_model, read_scheme, use_packed_layers

# Never code: the model is implemented here, hub code is not run.
HUB_FILES = ["*.json", "*.safetensors", "merges.txt"]
MOB_TOWERS = "vision_model.vision_model.vision_towers"
LM_HEAD = "language_model.lm_head.weight"
# How a long step tells how far it is: progress(part of the step done, 0..1, what it is doing now).
Progress = Callable[[float, str], None]
# The bar snapshot_download adds every file's written bytes to, by HTTP or Xet alike
# (huggingface_hub/_snapshot_download.py: `reconstruct_progress`, fed by `_AggregatedTqdm`).
SNAPSHOT_BYTES_BAR = "huggingface_hub.snapshot_download"
REPORT_EVERY = 0.25  # seconds: the download tells its bytes at most this often
# safetensors' dtype names (safe_open's get_dtype) of the integer tensors a checkpoint may hold
_SAFETENSORS_DTYPES = {"I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64}


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or does not match its config; str(e) says which and why."""


def resolve_checkpoint(path_or_id: str | Path, progress: Progress | None = None) -> Path:
    """A local checkpoint folder, or a Hugging Face model id downloaded (json + safetensors only).

    progress, for a model id: told "asking the Hub", then "1.2 of 4.4 GB downloaded" as bytes arrive."""
    path = Path(path_or_id).expanduser()
    if not path.is_dir():
        if path.exists():
            raise CheckpointError(f"{str(path_or_id)!r} is a file; pass the checkpoint folder that holds config.json")
        path = _download(str(path_or_id), progress)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json, so it is not an Eagle2 checkpoint folder")
    return path


def _download(model_id: str, progress: Progress | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        tqdm_class = None
        if progress:
            progress(0.0, "asking the Hub")
            total = _bytes_to_download(model_id)
            tqdm_class = _reporting_tqdm(_DownloadReport(progress, total)) if total else None
        return Path(snapshot_download(model_id, allow_patterns=HUB_FILES, tqdm_class=tqdm_class))
    except HFValidationError:
        reason = "it is neither a local folder nor a valid Hugging Face model id"
    except RepositoryNotFoundError:
        reason = "it is not a local folder, and the Hugging Face Hub has no such model (or it is private or gated)"
    except LocalEntryNotFoundError:
        reason = "it is not a local folder, the Hugging Face Hub cannot be reached and the model is not cached"
    except OSError as e:
        reason = f"it is not a local folder, and downloading it failed ({e})"
    raise CheckpointError(f"cannot open model {model_id!r}: {reason}. Pass a local checkpoint folder "
                          "(config.json + model.safetensors + tokenizer files) instead.")


def _bytes_to_download(model_id: str) -> int:
    """Bytes of the files snapshot_download would fetch now: the repo listing's sizes of the files not
    yet cached (its dry run; it sums the sizes only as files start, while small ones may be done).
    0 when the Hub cannot be asked: then nothing downloads, the cache is used or the error told."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import DryRunError

    try:
        plan = snapshot_download(model_id, allow_patterns=HUB_FILES, dry_run=True)
    except DryRunError:
        return 0
    return sum(file.file_size or 0 for file in plan if file.will_download)


class _DownloadReport:
    """Tells the bytes written so far as progress(part, "1.2 of 4.4 GB downloaded"), at most every
    REPORT_EVERY seconds, and once all are in. The part told never goes back (a resumed file may
    take back the bytes of its broken try)."""

    def __init__(self, progress: Progress, total: int):
        self.progress, self.total = progress, total
        self.done, self.part, self.told_at = 0, 0.0, -math.inf
        self._lock = threading.Lock()  # files download in several threads

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self.told_at < REPORT_EVERY and self.done < self.total:
                return
            self.told_at = now
            done = min(self.done, self.total)
            self.part = max(self.part, done / self.total)
            self.progress(self.part, f"{_amount(done, self.total)} downloaded")


def _amount(done: int, total: int) -> str:
    """'1.2 of 4.4 GB' (in MB below a gigabyte)."""
    scale, unit = (1e9, "GB") if total >= 1e9 else (1e6, "MB")
    return f"{done / scale:.1f} of {total / scale:.1f} {unit}"


def _reporting_tqdm(report: _DownloadReport) -> type:
    """A tqdm class for snapshot_download whose bar of all the files' bytes also feeds `report`.

    It is huggingface_hub's own tqdm, so the console bars and HF_HUB_DISABLE_PROGRESS_BARS work as
    without it; it counts the bytes itself, as a disabled bar counts nothing. Its other bars (the
    per-thread file count) are left alone."""
    from huggingface_hub.utils import tqdm

    class ReportingTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            sums_bytes = kwargs.get("name") == SNAPSHOT_BYTES_BAR  # huggingface_hub's tqdm pops the name
            super().__init__(*args, **kwargs)
            self.sums_bytes = sums_bytes

        def update(self, n=1):
            shown = super().update(n)
            if self.sums_bytes:
                report.add(n)
            return shown

    return ReportingTqdm


def detect_mob_order(keys) -> tuple[str, ...]:
    """Tower names of a 9B checkpoint in vision_towers index order, e.g. ("convnext", "siglip")."""
    order = {}
    for key in keys:
        if key.startswith(MOB_TOWERS + "."):
            index, rest = key[len(MOB_TOWERS) + 1:].split(".", 1)
            if rest.startswith("vision_tower.vision_model.embeddings."):
                order[int(index)] = "siglip"
            elif rest.startswith("vision_tower.stem."):
                order[int(index)] = "convnext"
    if sorted(order.values()) != ["convnext", "siglip"] or sorted(order) != [0, 1]:
        raise CheckpointError(f"cannot find the SigLIP and ConvNeXt towers under {MOB_TOWERS}.*")
    return tuple(order[i] for i in (0, 1))


def key_prefixes(config: Eagle2Config, mob_order: tuple[str, ...] = ("convnext", "siglip")) -> dict[str, str]:
    """Model key prefix -> checkpoint key prefix for the vision tower; all other keys are equal."""
    if config.convnext is None:
        return {"vision_model.": "vision_model.vision_model."}
    return mob_key_prefixes(mob_order)


def mob_key_prefixes(mob_order: tuple[str, ...]) -> dict[str, str]:
    """key_prefixes of the 9B's two towers, in vision_towers index order (detect_mob_order)."""
    inner = {"siglip": "vision_tower.vision_model.", "convnext": "vision_tower."}
    return {f"vision_model.{name}.": f"{MOB_TOWERS}.{i}.{inner[name]}" for i, name in enumerate(mob_order)}


def to_checkpoint_key(key: str, prefixes: dict[str, str]) -> str:
    for model_prefix, ckpt_prefix in prefixes.items():
        if key.startswith(model_prefix):
            return ckpt_prefix + key[len(model_prefix):]
    return key


def to_model_key(key: str, prefixes: dict[str, str]) -> str | None:
    """The model key of a checkpoint key; None for keys that are skipped (tower heads)."""
    for model_prefix, ckpt_prefix in prefixes.items():
        if key.startswith(ckpt_prefix):
            rest = key[len(ckpt_prefix):]
            return None if rest.startswith("head.") else model_prefix + rest
    return key


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise CheckpointError(f"{path} has neither model.safetensors nor model.safetensors.index.json "
                          "(only safetensors weights are read)")


def default_dtype(device: torch.device | str, cpuinfo: str | None = None) -> torch.dtype:
    """bfloat16 on CUDA and on CPUs with native bfloat16 matmul; float32 elsewhere (a CPU without it
    emulates bfloat16 through float32, slower than float32 itself)."""
    kind = torch.device(device).type
    return torch.bfloat16 if kind == "cuda" or (kind == "cpu" and native_bf16(cpuinfo)) else torch.float32


def _read_cpuinfo(given: str | None) -> str:
    """`given`, or the text of /proc/cpuinfo."""
    if given is not None:
        return given
    try:
        with open("/proc/cpuinfo") as file:
            return file.read()
    except OSError:  # not Linux
        return ""


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bfloat16 natively: Intel AMX, or AVX512-BF16 (Intel, AMD Zen 4 on).
    `cpuinfo`: the text of /proc/cpuinfo (read when not given)."""
    flags = {flag for line in _read_cpuinfo(cpuinfo).splitlines() if line.startswith("flags")
             for flag in line.partition(":")[2].split()}
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def physical_cores(cpuinfo: str | None = None) -> int:
    """Threads for matmuls on this CPU: one per physical core (SMT siblings share a core's vector
    units, so a thread each only adds contention), at most the CPUs this process may use."""
    allowed = len(os.sched_getaffinity(0))
    cores, physical = set(), "0"
    for line in _read_cpuinfo(cpuinfo).splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "physical id":
            physical = value
        elif key == "core id":
            cores.add((physical, value))
    return min(allowed, len(cores)) if cores else allowed


def weight_bytes(path: Path, dtype: torch.dtype) -> int:
    """Bytes of a checkpoint's tensors once loaded as `dtype` (float ones; packed 4-bit weights and
    other integer tensors keep their own), from the safetensors headers alone."""
    total = 0
    for file in weight_files(path):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_slice(key)
                integer = _SAFETENSORS_DTYPES.get(tensor.get_dtype())
                itemsize = integer.itemsize if integer is not None else dtype.itemsize
                total += math.prod(tensor.get_shape()) * itemsize
    return total


def parameter_counts(path: Path) -> tuple[int, int]:
    """(vision tower and projector, language model less its embedding and head) parameters of a
    checkpoint, from the safetensors headers alone: the work per tile and per prompt token."""
    vision = language = 0
    for file in weight_files(path):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                numel = math.prod(handle.get_slice(key).get_shape())
                if key.endswith(".weight_packed"):
                    numel *= PER_WORD
                if key.startswith(("vision_model.", "mlp1.")):
                    vision += numel
                elif key.startswith("language_model.") and key != LM_HEAD and "embed_tokens" not in key:
                    language += numel
    return vision, language


def load_eagle2(path_or_id: str | Path, device="cpu", dtype: torch.dtype | None = None,
                load_in_8bit: bool = False, attn: str = "sdpa", progress: Progress | None = None,
                quantize: str | None = None) -> Eagle2Model:
    """Build the model from config.json and load its safetensors; returns it in eval mode.

    dtype defaults to bfloat16 on CUDA and float32 on CPU. load_in_8bit is quantize="int8": the
    language model's decoder Linear layers with int8 weights and float activations (`Int8Linear`). attn: "sdpa" or
    "flash_attention_2" (needs the flash_attn package; used by the vision tower). progress: told
    before each safetensors file is read, "shard 2 of 4" (or "one weights file"). A checkpoint in
    compressed-tensors' pack-quantized format loads its packed layers as 4-bit ones (model/quantized.py);
    quantize ("int4" or "int8") makes the language model's decoder Linear layers so at load.
    """
    path = resolve_checkpoint(path_or_id)
    config = Eagle2Config.from_dir(path)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    _check_attn(attn, device, dtype)
    packed = packed_scheme(path)
    _check_quantize(quantize, load_in_8bit, packed)
    quantize = "int8" if load_in_8bit else quantize

    # Built on the meta device (no memory, no random init; a thread-local mode, so other threads
    # building models at the same time are not affected); the weights are then assigned as loaded.
    with torch.device("meta"):
        model = Eagle2Model(config, attn)
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(f, framework="pt")) for f in weight_files(path)]
        stored = {key: h for h in handles for key in h.keys()}
        prefixes = key_prefixes(config, detect_mob_order(stored)) if config.convnext else key_prefixes(config)
        names = {}  # model key -> checkpoint key
        for key in stored:
            model_key = to_model_key(key, prefixes)
            if model_key is not None:
                names[model_key] = key
        if packed:
            layers = [key.removesuffix(".weight_packed") for key in names if key.endswith(".weight_packed")]
            try:
                use_packed_layers(model, layers, *packed)
            except ValueError as e:
                raise CheckpointError(f"{path}: {e}") from None
        params = model.state_dict()
        tie = config.text.tie_word_embeddings and LM_HEAD not in names
        _check_keys(path, params, names, stored, prefixes, skip={LM_HEAD} if tie else set())
        load_device = "cpu" if quantize else device  # --quantize layers quantise on the device, one at a time
        model_keys = {key: model_key for model_key, key in names.items()}
        state = {}
        shards = len(handles)
        for i, handle in enumerate(handles):
            if progress:
                progress(i / shards, f"shard {i + 1} of {shards}" if shards > 1 else "one weights file")
            for key in handle.keys():
                if key in model_keys:
                    tensor = handle.get_tensor(key)
                    state[model_keys[key]] = tensor.to(load_device, dtype if tensor.is_floating_point() else None)
    model.load_state_dict(state, strict=False, assign=True)
    del state  # the fused layers below replace the loaded ones: one layer's parts at a time in memory

    lm = model.language_model
    embed = lm.model.embed_tokens.weight
    if tie or (config.text.tie_word_embeddings and torch.equal(lm.lm_head.weight, embed)):
        lm.lm_head.weight = embed  # one matrix instead of two equal ones
    lm.init_buffers()
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a module that made a tensor in __init__ no checkpoint holds: compute it after load
        raise AssertionError(f"not loaded or computed after load: {', '.join(left[:5])}")
    lm.fuse_projections()  # before any quantising: a --quantize or --load-8bit layer is then made of the fused one
    for module in model.modules():
        if isinstance(module, Int4Linear):
            module.prepare()
    if quantize:
        quantize_language_model(lm, 4 if quantize == "int4" else 8, device)
    return model.to(device).eval().requires_grad_(False)


def packed_scheme(path: Path) -> tuple[int | None, bool] | None:
    """(group size, None for one scale per output; symmetric) of a checkpoint whose config.json
    holds a compressed-tensors W4A16 `pack-quantized` quantization_config; None without one."""
    found = json.loads((path / "config.json").read_text()).get("quantization_config")
    if found is None:
        return None
    try:
        return read_scheme(found)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _check_quantize(quantize: str | None, load_in_8bit: bool, packed) -> None:
    if quantize not in (None, "int4", "int8"):
        raise ValueError(f"unknown quantization {quantize!r}: use 'int4' or 'int8'")
    if packed and (quantize or load_in_8bit):
        raise ValueError("this checkpoint already holds 4-bit weights: load it without --quantize or --load-8bit")
    if quantize and load_in_8bit:
        raise ValueError("--quantize and --load-8bit are two ways to the same end: pick one")


def _check_keys(path, params: dict, names: dict, stored: dict, prefixes: dict, skip: set) -> None:
    expected = params.keys() - skip
    problems = []
    for label, keys in (("missing", sorted(expected - names.keys())), ("unexpected", sorted(names.keys() - expected))):
        if keys:
            shown = ", ".join(names.get(k) or to_checkpoint_key(k, prefixes) for k in keys[:5])
            problems.append(f"{len(keys)} {label} weights ({shown}{', ...' if len(keys) > 5 else ''})")
    wrong = []
    for model_key in sorted(expected & names.keys()):
        key = names[model_key]
        shape = list(stored[key].get_slice(key).get_shape())
        if shape != list(params[model_key].shape):
            wrong.append(f"{key} is {shape}, expected {list(params[model_key].shape)}")
    if wrong:
        more = "; ..." if len(wrong) > 5 else ""
        problems.append(f"{len(wrong)} weights of the wrong shape ({'; '.join(wrong[:5])}{more})")
    if problems:
        raise CheckpointError(f"the weights in {path} do not match its config.json: " + "; ".join(problems))


def _check_attn(attn: str, device: torch.device, dtype: torch.dtype) -> None:
    if attn == "sdpa":
        return
    if attn != "flash_attention_2":
        raise ValueError(f"unknown attention implementation {attn!r}: use 'sdpa' or 'flash_attention_2'")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        raise ValueError("attn='flash_attention_2' needs the flash_attn package, which is not installed; "
                         "use the default attn='sdpa'") from None
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        raise ValueError("flash_attention_2 runs on CUDA in float16 or bfloat16 only")


def to_cpu_decode_layout(lm: nn.Module) -> None:
    """Store the language model's Linear weights with at least as many outputs as inputs (q, o, gate,
    up, lm_head and the embedding tied to it) input-major, seen as the usual [out, in] view. A
    one-token step multiplies one row by each, which MKL's kernels do faster in this layout; the
    decode at the `small` size went from 45 to 87 tokens/s (benchmarks/bench_vllm_cpu.py)."""
    for module in lm.modules():
        if isinstance(module, nn.Linear) and module.out_features >= module.in_features:
            module.weight.data = module.weight.data.t().contiguous().t()


def to_dynamic_int8(model: nn.Module) -> None:
    """Every Linear layer as PyTorch's dynamic int8 one (CPU only): int8 weights, per output
    channel, and activations quantised per call; a quarter of float32's bytes read per token."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
