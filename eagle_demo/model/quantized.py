"""Weight-only quantised Linear layers: 4-bit ones read from compressed-tensors' `pack-quantized`
checkpoints (W4A16, the format vLLM serves), and 4- or 8-bit ones made at load (`--quantize`).

The format, per quantised Linear layer `NAME` (compressed-tensors' PackedQuantizationCompressor):
- `NAME.weight_packed` int32 [out, in / 8]: value k of a row sits at bits 4 (k mod 8) of word k div 8,
  stored as q + 8 for q in -8..7;
- `NAME.weight_scale` [out, in / group]: one scale per group of `group` inputs;
- `NAME.weight_zero_point` int32 [out / 8, in / group], asymmetric checkpoints only: packed the same
  way along the output dimension;
- `NAME.weight_shape` int64 [2]: [out, in].
The weight is (q - zero_point) * scale. Exports here are symmetric (zero point 0), which every int4
kernel reads exactly.

The layers compute with PyTorch's own int4 kernels, on bfloat16 activations (the "A16"): tinygemm
(`_weight_int4pack_mm`) on CUDA GPUs from Ampere on, `_weight_int4pack_mm_for_cpu` on a CPU for decode
steps; anything else (a prompt on a CPU, an older GPU, a shape a kernel does not take) multiplies by
the dequantised weight.
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F
from torch import nn

BITS = 4
PER_WORD = 32 // BITS
OFFSET = 1 << (BITS - 1)  # q + 8 is what a word stores
# Scales are stored in bfloat16, the dtype every int4 kernel takes them in: rounded (up) before the
# weights are quantised against them, so the kernels see exactly the scales the values were made with.
SCALE_DTYPE = torch.bfloat16
GROUP_SIZES = (128, 64, 32)  # what `--quantize int4` picks from, largest first; tinygemm takes these
CPU_OUT_MULTIPLE = 16  # PyTorch's CPU int4 kernel takes weights with a multiple of 16 outputs
# Inputs of this many rows or more (a prompt, not a decode step) multiply by the dequantised weight on a
# CPU: float32 matrix products beat the int4 kernel's bfloat16 ones there, and the dequantising is shared
# by all the rows. Hence a CPU layer keeps the checkpoint's packed form beside the kernel's (8 bits a weight).
CPU_KERNEL_ROWS = 128
# Rows an int8 layer multiplies with `_weight_int8pack_mm` on CUDA: a decode step's. Its CUDA kernel
# reduces each output on CUDA cores in float32 (aten/src/ATen/native/cuda/int8mm.cu), reading each
# weight byte once, which suits one row; a prompt's rows go to cuBLAS on the dequantised weight.
CUDA_INT8_KERNEL_ROWS = 4


def pack(q: torch.Tensor) -> torch.Tensor:
    """int8 values in -8..7 [rows, cols] -> int32 words [rows, cols / 8], compressed-tensors' order."""
    rows, cols = q.shape
    if cols % PER_WORD:
        raise ValueError(f"{cols} columns do not pack into whole 32-bit words of {PER_WORD} values")
    nibbles = (q + OFFSET).to(torch.uint8)
    # value k at bits 4 (k mod 8) of word k div 8 is, in a little-endian word, byte k div 2's low
    # nibble (k even) or high nibble (k odd)
    pairs = nibbles[:, 0::2] | (nibbles[:, 1::2] << BITS)
    return _words_from_bytes(pairs.contiguous()).view(rows, cols // PER_WORD)


def unpack(words: torch.Tensor, cols: int) -> torch.Tensor:
    """int32 words [rows, cols / 8] -> int8 values in -8..7 [rows, cols]."""
    pairs = _bytes_from_words(words.contiguous())
    nibbles = torch.stack((pairs & 0xF, pairs >> BITS), dim=-1).flatten(1)
    return nibbles[:, :cols].to(torch.int8) - OFFSET


def _words_from_bytes(pairs: torch.Tensor) -> torch.Tensor:
    """uint8 [rows, 4n] as int32 [rows, n], byte 0 the lowest of each word whatever the host's order."""
    if sys.byteorder == "big":
        pairs = pairs.view(pairs.shape[0], -1, 4).flip(-1).reshape(pairs.shape[0], -1).contiguous()
    return pairs.view(torch.int32)


def _bytes_from_words(words: torch.Tensor) -> torch.Tensor:
    pairs = words.view(torch.uint8)
    if sys.byteorder == "big":
        pairs = pairs.view(words.shape[0], -1, 4).flip(-1).reshape(words.shape[0], -1)
    return pairs


def quantize_groups(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest: (q int8 [out, in] in -8..7, scale [out, in / group_size]).
    A group's scale maps its largest magnitude to 7.5, as compressed-tensors' min-max observer does
    (rounded up to bfloat16: to 7.5 at most, so no value is more than half a step off)."""
    out, width = weight.shape
    if width % group_size:
        raise ValueError(f"a group size of {group_size} does not divide the {width} inputs of a layer")
    groups = weight.float().reshape(out, width // group_size, group_size)
    top = (groups.abs().amax(-1) / (OFFSET - 0.5)).clamp(min=torch.finfo(SCALE_DTYPE).tiny)
    scale = top.to(SCALE_DTYPE)
    # the next bfloat16 up where rounding went down (a positive float's bits grow with its value)
    scale = torch.where(scale.float() < top, (scale.view(torch.int16) + 1).view(SCALE_DTYPE), scale)
    q = torch.round(groups / scale.float().unsqueeze(-1)).clamp(-OFFSET, OFFSET - 1)
    return q.to(torch.int8).reshape(out, width), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(q - zero) * scale as a [out, in] weight; zero, like scale, per group (None: 0)."""
    out, width = q.shape
    groups = q.reshape(out, scale.shape[1], -1).float()  # a new tensor: the steps below work in place
    if zero is not None:
        groups.sub_(zero.float().unsqueeze(-1))
    return groups.mul_(scale.float().unsqueeze(-1)).reshape(out, width).to(dtype)


def _kernel(device: torch.device, out_features: int, in_features: int, group_size: int) -> str | None:
    """Which of PyTorch's int4 kernels takes this weight on `device`: "cuda", "cpu" or None."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:  # tinygemm: Ampere on
        takes = out_features % 8 == 0 and in_features % 32 == 0 and group_size in (32, 64, 128, 256)
        return "cuda" if takes else None
    if device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):  # where this PyTorch has it
        return "cpu" if out_features % CPU_OUT_MULTIPLE == 0 and in_features % 2 == 0 else None
    return None


class Int4Linear(nn.Module):
    """A Linear layer with 4-bit weights in groups along the inputs, and float bias.

    Built with the checkpoint's tensors as its state (`weight_packed`, `weight_scale`, `weight_shape`,
    `weight_zero_point` when asymmetric), so a packed checkpoint loads into it by name, shapes checked;
    `prepare()` then lays the values out for the device's kernel (on CUDA, in place of the checkpoint's).
    """

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool = True,
                 symmetric: bool = True, device=None):
        super().__init__()
        if in_features % group_size or in_features % PER_WORD:
            raise ValueError(f"{in_features} inputs do not split into groups of {group_size} packed values")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("weight_packed", torch.empty(out_features, in_features // PER_WORD, dtype=torch.int32,
                                                          device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, groups, dtype=SCALE_DTYPE, device=device))
        self.register_buffer("weight_shape", torch.empty(2, dtype=torch.int64, device=device))
        if not symmetric:
            self.register_buffer("weight_zero_point", torch.empty(-(-out_features // PER_WORD), groups,
                                                                  dtype=torch.int32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None
        self.kernel: str | None = None

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int) -> Int4Linear:
        """Quantise a float Linear layer's weight (symmetric round-to-nearest) on its own device."""
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, group_size, bias=linear.bias is not None,
                    device=weight.device)
        q, scale = quantize_groups(weight.detach(), group_size)
        layer.weight_packed, layer.weight_scale = pack(q), scale
        layer.weight_shape = torch.tensor([linear.out_features, linear.in_features], device=weight.device)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer.prepare()

    def values(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(q int8 [out, in], scale, zero point or None) from the checkpoint's tensors."""
        q = unpack(self.weight_packed, self.in_features)
        zero = getattr(self, "weight_zero_point", None)
        if zero is not None:
            zero = unpack(zero.t().contiguous(), self.out_features).t()
        return q, self.weight_scale, zero

    def prepare(self) -> Int4Linear:
        """Lay the weights out for the kernel of the device they are on; keep them as loaded if none
        takes them (the dequantised weight is then multiplied)."""
        if tuple(self.weight_shape.tolist()) != (self.out_features, self.in_features):
            raise ValueError(f"weight_shape {self.weight_shape.tolist()} does not match the layer's "
                             f"{[self.out_features, self.in_features]}")
        device = self.weight_packed.device
        self.kernel = _kernel(device, self.out_features, self.in_features, self.group_size)
        if self.kernel is None:
            return self
        q, scale, zero = self.values()
        nibbles = (q.to(torch.int32) + OFFSET)
        # both kernels compute (nibble - 8) * scale + zero: zero = -zero_point * scale
        offset = torch.zeros_like(scale) if zero is None else (-zero.float() * scale.float()).to(scale.dtype)
        scales_and_zeros = torch.stack([scale, offset], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
        if self.kernel == "cuda":
            inner_k_tiles = next(t for t in (8, 4, 2) if self.in_features % (16 * t) == 0)
            pairs = (nibbles[:, ::2] << 4 | nibbles[:, 1::2]).to(torch.uint8)
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs.contiguous(), inner_k_tiles)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles.contiguous(), 1)
        if self.kernel == "cuda":  # a CPU keeps the checkpoint's form too, for prompts (see forward)
            for name in ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point"):
                if hasattr(self, name):
                    delattr(self, name)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_and_zeros", scales_and_zeros, persistent=False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.kernel is None or (self.kernel == "cpu" and flat.shape[0] >= CPU_KERNEL_ROWS):
            y = F.linear(flat, dequantize(*self.values(), dtype=x.dtype))
        else:
            matmul = (torch.ops.aten._weight_int4pack_mm if self.kernel == "cuda"
                      else torch.ops.aten._weight_int4pack_mm_for_cpu)
            y = matmul(flat.to(torch.bfloat16).contiguous(), self.packed, self.group_size, self.scales_and_zeros)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, kernel={self.kernel}")


class Int8Linear(nn.Module):
    """A Linear layer with int8 weights, one scale per output (symmetric), made at load, on float
    activations (never cast to float16, no host sync: a CUDA graph holds it). PyTorch's
    `_weight_int8pack_mm` multiplies where it runs, for at most `kernel_rows` rows; other inputs
    multiply by the dequantised weight."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        self.register_buffer("weight", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        device = self.weight.device
        self.kernel_rows = 0 if not _int8_kernel_runs(device) else (
            CUDA_INT8_KERNEL_ROWS if device.type == "cuda" else sys.maxsize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] <= self.kernel_rows:
            y = torch._weight_int8pack_mm(flat.to(torch.bfloat16), self.weight, self.scale)
        else:
            y = F.linear(flat, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


@functools.cache
def _int8_kernel_runs(device: torch.device) -> bool:
    """Whether this PyTorch build has `_weight_int8pack_mm` for the device (it has a CPU kernel; CUDA
    kernels vary by release)."""
    try:
        torch._weight_int8pack_mm(torch.zeros(1, 32, dtype=torch.bfloat16, device=device),
                                  torch.zeros(8, 32, dtype=torch.int8, device=device),
                                  torch.ones(8, dtype=torch.bfloat16, device=device))
        return True
    except (RuntimeError, NotImplementedError):
        return False


def group_size_for(in_features: int) -> int:
    """The largest of GROUP_SIZES that divides a layer's inputs (ValueError if none does)."""
    size = next((g for g in GROUP_SIZES if in_features % g == 0), None)
    if size is None:
        raise ValueError(f"no group size of {GROUP_SIZES} divides a layer's {in_features} inputs")
    return size


def quantize_language_model(lm: nn.Module, bits: int, device: torch.device) -> None:
    """Replace the decoder layers' Linear layers (not lm_head) by Int4Linear (symmetric, groups of
    `group_size_for` its inputs) or Int8Linear, one at a time on `device`: a GPU holds the float
    weights of one layer at a time beside the quantised ones."""
    for layer in lm.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    child = child.to(device)
                    quantized = (Int4Linear.from_float(child, group_size_for(child.in_features)) if bits == 4
                                 else Int8Linear(child))
                    setattr(parent, name, quantized)


def read_scheme(config: dict) -> tuple[int | None, bool]:
    """(group size, None for one scale per output; symmetric) of a `quantization_config` this module
    reads: compressed-tensors' W4A16 in `pack-quantized` format. ValueError naming what differs."""
    method, fmt = config.get("quant_method"), config.get("format")
    groups = list((config.get("config_groups") or {}).values())
    if method != "compressed-tensors" or len(groups) != 1:
        raise ValueError(f"its quantization_config is {method or 'unknown'!r} with {len(groups)} groups; only "
                         "compressed-tensors' W4A16 (one group of 4-bit weights) loads here")
    group = groups[0]
    weights = group.get("weights") or {}
    fmt = group.get("format") or fmt
    strategy = weights.get("strategy")
    if (fmt != "pack-quantized" or weights.get("num_bits") != BITS or weights.get("type", "int") != "int"
            or strategy not in ("group", "channel") or group.get("input_activations") or weights.get("actorder")):
        raise ValueError(f"its quantization_config ({fmt}, weights {weights}) is not 4-bit integer weights packed in "
                         "groups or channels with float activations (W4A16 pack-quantized), which is what loads here")
    return (weights.get("group_size") if strategy == "group" else None), bool(weights.get("symmetric", True))


def use_packed_layers(model: nn.Module, names: list[str], group_size: int | None, symmetric: bool) -> None:
    """Replace each named Linear layer of `model` (built on the meta device) by an Int4Linear there, whose
    tensors then load from a packed checkpoint by name (group_size None: one scale per output)."""
    for name in names:
        parent, _, child = name.rpartition(".")
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"it holds packed weights for {name}, which is not a Linear layer of the model")
        setattr(model.get_submodule(parent), child, Int4Linear(
            linear.in_features, linear.out_features, group_size or linear.in_features, bias=linear.bias is not None,
            symmetric=symmetric, device="meta"))


def describe_weights(model: nn.Module) -> str | None:
    """'4-bit weights' or '8-bit weights' when the model has such layers; None when it has not."""
    kinds = {type(m) for m in model.modules()}
    if Int4Linear in kinds:
        return "4-bit weights"
    if Int8Linear in kinds:
        return "8-bit weights"
    return None
