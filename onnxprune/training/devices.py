"""torch for training: importing it with a clear message when it is missing, the devices this machine can train
on, and the process group ``torchrun`` describes."""
from __future__ import annotations

import os
from typing import Any

from onnxprune.errors import UsageError

__all__ = ["require_torch", "check_device", "device_for", "distributed"]


def require_torch(what: str = "fine-tuning") -> Any:
    """Import torch, or say that ``what`` needs it and how to install it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UsageError(f"{what} needs torch: pip install 'onnxprune[torch]'") from exc
    return torch


def check_device(name: str) -> None:
    """Refuse a torch device this machine cannot train on, naming what it offers (a usage error, not a crash
    deep in training): ``--device cuda`` with a CPU-only torch, ``cuda:3`` on a machine with one GPU."""
    if name == "cpu":
        return
    torch = require_torch("--device")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device '{name}' is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    kind = device.type
    backend = getattr(torch, kind, None) if kind != "mps" else getattr(torch.backends, "mps", None)
    available = ["cpu"]
    if torch.cuda.is_available():
        available += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.append("mps")
    is_available = getattr(backend, "is_available", None)
    if kind == "cpu" or (callable(is_available) and is_available() and
                         (device.index is None or kind != "cuda" or device.index < torch.cuda.device_count())):
        return
    why = ("this torch is built without CUDA" if kind == "cuda" and not getattr(torch.version, "cuda", None)
           else "not available on this machine")
    raise UsageError(f"--device {name}: {why} (torch {torch.__version__}); available: {', '.join(available)}")


def device_for(torch: Any, name: str, world: int) -> Any:
    """The torch device to train on: under torchrun, ``cuda`` means this process's GPU (``LOCAL_RANK``)."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and world > 1:  # one GPU per process under torchrun
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def distributed(torch: Any, device: str) -> tuple[int, int]:
    """(rank, world size): joins the process group ``torchrun`` describes, or (0, 1) alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()
