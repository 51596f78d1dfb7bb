"""`python -m eagle_demo quantize`: an Eagle2 checkpoint to a 4-bit one (W4A16, compressed-tensors'
`pack-quantized` format, which vLLM serves and `--model` loads).

Only the language model's decoder Linear layers are quantised, symmetric, in groups along their
inputs; the vision towers, the projector, the embeddings, the norms and lm_head are copied as they
are. The checkpoint is read and written one safetensors shard at a time, by tensor name (no model
is built for RTN), so memory holds about one shard. AWQ (`--method awq`) first runs a calibration
set through the model (eagle_demo/awq.py) and folds the scales it finds into the weights.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .awq import Scaling
from .model.loading import CheckpointError, resolve_checkpoint, weight_files
from .model.quantized import BITS, pack, quantize_groups

# The tensors quantised: the decoder layers' Linear weights, by checkpoint key (both layouts).
QUANTIZED = re.compile(r"language_model\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight")
# What stays as it is, as compressed-tensors names it (module names, regex after "re:"), which is
# also how vLLM's Eagle2 model names these modules.
IGNORED = ["language_model.lm_head", "re:vision_model\\.", "re:mlp1\\."]
INDEX = "model.safetensors.index.json"
SIDE_FILES = ("*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken")  # tokenizer, processor, generation config
METHODS = ("rtn", "awq")


def quantization_config(group_size: int) -> dict:
    """config.json's `quantization_config`: compressed-tensors' W4A16 scheme, as vLLM and the
    compressed-tensors library read it."""
    weights = {"num_bits": BITS, "type": "int", "symmetric": True, "strategy": "group", "group_size": group_size,
               "dynamic": False, "actorder": None, "observer": "minmax", "observer_kwargs": {}}
    scheme = {"targets": ["Linear"], "weights": weights, "input_activations": None, "output_activations": None,
              "format": "pack-quantized"}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": scheme}, "ignore": IGNORED, "kv_cache_scheme": None}


def quantize_checkpoint(model: str | Path, out: str | Path, method: str = "rtn", group_size: int = 128,
                        device: str | None = None, images: list[str] | None = None, show_progress: bool = True) -> Path:
    """Write the 4-bit checkpoint of `model` (a folder or hub id) to `out`; returns its path.

    device: where AWQ runs the calibration set (default: cuda when there is one). images: AWQ's
    calibration images (default: the repository's assets)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {METHODS}")
    path = resolve_checkpoint(model)
    out = Path(out)
    config = json.loads((path / "config.json").read_text())
    if "quantization_config" in config:
        raise CheckpointError(f"{path} is already quantised ({config['quantization_config'].get('format')})")
    if out.resolve() == path.resolve():
        raise ValueError("write the quantised checkpoint to another folder than the one it is made from")
    files = weight_files(path)
    _check_group_size(files, group_size)
    scaling = Scaling()
    if method == "awq":
        from .awq import calibrate  # loads the engine: only for AWQ

        scaling = calibrate(path, group_size, device, images)
    out.mkdir(parents=True, exist_ok=True)
    weight_map = _write_shards(files, out, group_size, scaling, show_progress)
    if len(files) > 1:
        total = sum(_nbytes(out / name) for name in set(weight_map.values()))
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    _copy_side_files(path, out)
    config["quantization_config"] = quantization_config(group_size)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def _check_group_size(files: list[Path], group_size: int) -> None:
    """Every quantised layer's inputs must split into whole groups (and vLLM's kernels want 32 | in)."""
    if group_size <= 0 or group_size % 32:
        raise ValueError(f"the group size must be a positive multiple of 32, not {group_size}")
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                if QUANTIZED.fullmatch(key):
                    width = handle.get_slice(key).get_shape()[1]
                    if width % group_size:
                        fits = [g for g in (128, 64, 32) if width % g == 0]
                        raise ValueError(f"a group size of {group_size} does not divide the {width} inputs of {key}; "
                                         f"use --group-size {fits[0] if fits else 32}")


def _write_shards(files: list[Path], out: Path, group_size: int, scaling: Scaling, show_progress: bool) -> dict:
    """Each input shard as an output shard of the same name; returns {tensor name: file name}."""
    from huggingface_hub.utils import tqdm

    total = sum(_tensor_bytes(file) for file in files)
    weight_map = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc="quantizing", disable=not show_progress) as bar:
        for file in files:
            tensors = {}
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    tensor = handle.get_tensor(key)
                    bar.update(tensor.nbytes)
                    tensors.update(_converted(key, tensor, group_size, scaling))
            save_file(tensors, out / file.name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, file.name))
            del tensors
    return weight_map


def _converted(key: str, tensor: torch.Tensor, group_size: int, scaling: Scaling) -> dict[str, torch.Tensor]:
    """The output tensors for one input tensor: its packed form when it is quantised, else itself
    (AWQ's divisor applied where it has one)."""
    quantized = QUANTIZED.fullmatch(key) is not None
    if key not in scaling.rows and not quantized:
        return {key: tensor}
    value = tensor.float()
    if key in scaling.rows:
        value = value / scaling.rows[key].view(-1, *[1] * (value.dim() - 1))
    if not quantized:
        return {key: value.to(tensor.dtype)}
    if key in scaling.columns:
        value = value * scaling.columns[key]
    q, scale = quantize_groups(value, group_size)
    name = key.removesuffix(".weight")
    return {f"{name}.weight_packed": pack(q), f"{name}.weight_scale": scale,
            f"{name}.weight_shape": torch.tensor(list(value.shape), dtype=torch.int64)}


def _copy_side_files(path: Path, out: Path) -> None:
    """The tokenizer and the other small files a checkpoint folder needs (config.json is rewritten)."""
    for pattern in SIDE_FILES:
        for source in path.glob(pattern):
            if source.name not in ("config.json", INDEX) and source.is_file():
                shutil.copyfile(source, out / source.name)


def _nbytes(file: Path) -> int:
    return file.stat().st_size


def _tensor_bytes(file: Path) -> int:
    """The bytes of a safetensors file's tensors: the file less its header (8 bytes of length, then JSON)."""
    with open(file, "rb") as f:
        return file.stat().st_size - 8 - int.from_bytes(f.read(8), "little")


def add_command(commands) -> None:
    """The `quantize` subcommand of `python -m eagle_demo`."""
    p = commands.add_parser("quantize", help="write a 4-bit (W4A16, compressed-tensors) copy of a checkpoint")
    p.add_argument("--model", required=True, help="hub id or local checkpoint folder")
    p.add_argument("--out", required=True, help="the folder to write the 4-bit checkpoint to")
    p.add_argument("--method", choices=METHODS, default="rtn",
                   help="rtn: round to nearest, fast, no model run; awq: activation-aware scales from a calibration "
                        "set run through the model (needs the model's memory)")
    p.add_argument("--group-size", type=int, default=128, help="inputs sharing one scale")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="where AWQ runs its calibration set")
    p.add_argument("--calibration-image", action="append", default=None,
                   help="an image for AWQ's calibration set; repeat for several (default: the repository's assets)")


def run(args) -> int:
    path = quantize_checkpoint(args.model, args.out, method=args.method, group_size=args.group_size,
                               device=args.device, images=args.calibration_image)
    print(path)
    return 0
