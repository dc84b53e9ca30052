"""Where models run: params.yaml's `device` (auto, cpu, cuda), decided in this one place.

Every stage that loads a model, and `make serve`, asks here. `cuda` fails within seconds, before any work, naming why
torch cannot use CUDA: without it, a gpu profile whose torch cannot see the GPU trains a 7B on the CPU for hours.
Docs: docs/gpus.md ("Device").
"""

from __future__ import annotations

import os
import shutil
import subprocess

CHOICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """CUDA was asked for and is not usable; the message says why and what to do."""


def nvidia_driver() -> str | None:
    """The driver version nvidia-smi reports, or None where it is missing or fails."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def cuda_problem() -> str | None:
    """Why torch cannot use CUDA here, or None when it can."""
    import torch

    if torch.version.cuda is None:
        return (f"the installed torch {torch.__version__} is a CPU-only build; run `make setup` on the GPU machine "
                "(it installs the CUDA build where nvidia-smi works)")
    if torch.cuda.is_available():
        return None
    driver = nvidia_driver()
    if driver is None:
        where = ("nvidia-smi is not on PATH: no NVIDIA driver here" if not shutil.which("nvidia-smi")
                 else "nvidia-smi fails: the driver is not loaded or sees no GPU")
        return f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no GPU; {where}"
    return (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} and torch.cuda.is_available() is "
            f"False with NVIDIA driver {driver} (CUDA 13 needs driver 580 or newer; check CUDA_VISIBLE_DEVICES); "
            "install a torch built for your driver's CUDA (docs/gpus.md: Installing on a GPU machine)")


def resolve(setting: str, what: str) -> str:
    """'cuda' or 'cpu' for params.yaml's `device` `setting`; DeviceError when it says cuda and
    CUDA is not usable. `what` names the stage in the message."""
    if setting not in CHOICES:
        raise DeviceError(f"params.yaml: device: expected one of {', '.join(CHOICES)}, got {setting!r}")
    if setting == "cpu":
        return "cpu"
    problem = cuda_problem()
    if setting == "auto":
        return "cpu" if problem else "cuda"
    if problem:
        raise DeviceError(f"{what}: params.yaml says device: cuda (this profile needs a GPU), and CUDA is not "
                          f"usable: {problem}. Nothing was started (under dvc repro, `dvc checkout` puts back "
                          "the previous outputs DVC removed before running the stage). On a machine without a "
                          "GPU, compose a CPU profile: make params PROFILE=cpu (or OVERRIDES='device=cpu')")
    return "cuda"


def require(setting: str, what: str) -> str:
    """resolve() for stage entry points: a DeviceError ends the process with its message."""
    try:
        return resolve(setting, what)
    except DeviceError as exc:
        raise SystemExit(f"error: {exc}") from None


def gpu_count(device: str) -> int:
    """GPUs this process sees on `device` (0 on the CPU)."""
    if device != "cuda":
        return 0
    import torch

    return torch.cuda.device_count()


def torch_dtype(name: str, device: str = "cpu"):
    """A config's dtype name as torch's; `auto`: bfloat16 on a GPU that has it, else float32."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def cpu_threads(setting: int) -> int:
    """A config's thread count: 0 means every core this process may use."""
    return setting or len(os.sched_getaffinity(0))
