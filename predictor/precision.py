"""Serving precision: which one a device does well, and the autocast that applies it.

`auto` picks bf16 on a CPU with native bf16 (AVX512-BF16 or AMX-BF16),
bf16 on a GPU with bf16 tensor cores (compute capability 8.0+), fp16 on
older tensor-core GPUs (7.x), fp32 otherwise (docs/adr/0003). Weights stay
fp32; autocast runs convolutions, matmuls and attention in the reduced type,
and Demucs' STFT and iSTFT stay fp32 (autocast keeps `stft` in fp32 on CPU,
the waveform going in is fp32, and the decoder output is rescaled by fp32
statistics before the iSTFT, which promotes it back).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPU_FP16_FLAGS = ("avx512_fp16", "amx_fp16")


class PrecisionError(ValueError):
    """The requested precision is misspelt or the device cannot run it well."""


@dataclass(frozen=True)
class Capability:
    """What the serving device offers, as the decision needs it (testable without hardware)."""

    device: str  # "cpu" or "cuda"
    cpu_flags: frozenset[str] = frozenset()
    cuda_capability: tuple[int, int] | None = None  # (major, minor) of the GPU
    name: str = ""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux). torch's get_cpu_capability() says "AVX512"
    for CPUs with and without bf16 instructions alike, so the flags decide."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def capability_of(device: str) -> Capability:
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return Capability("cuda", cuda_capability=torch.cuda.get_device_capability(index),
                          name=torch.cuda.get_device_name(index))
    return Capability("cpu", cpu_flags=cpu_flags(), name=torch.backends.cpu.get_cpu_capability())


def _check(precision: str, cap: Capability) -> str | None:
    """Why `cap` cannot serve `precision` well, or None when it can."""
    if precision == "fp32":
        return None
    if cap.device == "cpu":
        wanted = CPU_BF16_FLAGS if precision == "bf16" else CPU_FP16_FLAGS
        if cap.cpu_flags & set(wanted):
            return None
        return (f"precision {precision} needs a CPU with {' or '.join(wanted)}; this one "
                f"({cap.name or 'unknown'}) has neither, so {precision} would be emulated, slower than fp32")
    major = (cap.cuda_capability or (0, 0))[0]
    if precision == "bf16" and major < 8:
        return (f"precision bf16 needs a GPU of compute capability 8.0 or later (A100, A10G, L4, H100); "
                f"{cap.name or 'this GPU'} is {major}.x: use fp16 or auto")
    if precision == "fp16" and major < 7:
        return f"precision fp16 needs tensor cores (compute capability 7.0+); {cap.name or 'this GPU'} is {major}.x"
    return None


def parse(requested: str | None) -> str:
    """The setting's value, normalised; a name not in PRECISIONS is a PrecisionError."""
    name = (requested or "auto").strip().lower()
    if name not in PRECISIONS:
        raise PrecisionError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)} "
                             "(MUSICSPLIT_PRECISION)")
    return name


def resolve(requested: str | None, cap: Capability) -> str:
    """The precision to serve at: `requested`, or for `auto` the best `cap` does well.

    Raises PrecisionError for a name not in PRECISIONS or one the device cannot run well.
    """
    name = parse(requested)
    if name != "auto":
        problem = _check(name, cap)
        if problem:
            raise PrecisionError(problem)
        return name
    if cap.device == "cpu":
        return "bf16" if _check("bf16", cap) is None else "fp32"
    # GPUs: bf16 keeps fp32's range (no overflow); fp16 where bf16 has no tensor cores.
    for name in ("bf16", "fp16"):
        if _check(name, cap) is None:
            return name
    return "fp32"


def autocast(device: str, precision: str):
    """A context that runs the model's forward at `precision` on `device`."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.split(":")[0], dtype=dtype)
