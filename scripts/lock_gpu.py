"""`make lock-gpu`: resolve requirements/constraints-gpu.txt (the GPU flavour's pins) and check the committed file.

It resolves from any machine, with uv, what a GPU machine installs (manylinux_2_28 x86_64, Python 3.11, PyPI alone,
this machine's pip and uv configuration ignored), preferring the CPU flavour's pins; `make lock-gpu WRITE=1`
rewrites the file. It needs PyPI, so `make test` does not run it. Docs: docs/gpus.md.
"""
from __future__ import annotations

import argparse
import difflib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_install import read_constraints  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GPU_LOCK = "requirements/constraints-gpu.txt"
CPU_LOCK = "requirements/constraints-cpu.txt"
INPUTS = ("pyproject.toml", "requirements/gpu.in")
TARGET = ("--python-platform", "x86_64-manylinux_2_28", "--python-version", "3.11")
PYPI = "https://pypi.org/simple"
# The resolver is pinned too: another uv version may resolve the same inputs differently.
UV_VERSION = "0.13.9"
# Kept from this machine's environment: how to reach PyPI, never where packages come from.
TRANSPORT = {"PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES",
             "UV_NATIVE_TLS", "UV_HTTP_TIMEOUT", "UV_CACHE_DIR", "UV_CONCURRENT_DOWNLOADS"}
HEADLINE = ("torch", "vllm", "torchvision", "torchaudio", "torchcodec", "flashinfer-python", "triton", "apache-tvm-ffi")


def isolated_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_")) or k in TRANSPORT}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip.conf's find-links, extra indexes and constraint file
    return env


def uv_executable(env: dict[str, str]) -> Path:
    """uv UV_VERSION in a venv of its own in the user's cache: a tool of this script, not of the project."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distillery" / f"uv-{UV_VERSION}"
    uv = home / "bin" / "uv"
    if not uv.exists():
        print(f"lock-gpu: installing uv {UV_VERSION} into {home}")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
        subprocess.run([home / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--index-url", PYPI, f"uv=={UV_VERSION}"], env=env, check=True)
    return uv


def resolve(into: Path, env: dict[str, str]) -> None:
    shutil.copyfile(ROOT / CPU_LOCK, into)  # uv prefers the versions its output file already pins
    cmd = [uv_executable(env), "pip", "compile", "--no-config", *TARGET, "--default-index", PYPI,
           "--annotation-style", "split", "--custom-compile-command", "make lock-gpu WRITE=1",
           *INPUTS, "--output-file", into]
    print(f"lock-gpu: uv {UV_VERSION} pip compile {' '.join(INPUTS)} for {TARGET[1]}, Python {TARGET[3]},"
          f" from {PYPI} only, preferring {CPU_LOCK}'s versions")
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def summary(resolved: Path) -> str:
    gpu, cpu = read_constraints(resolved), read_constraints(ROOT / CPU_LOCK)
    same = [n for n in gpu if n in cpu and cpu[n].version == gpu[n].version]
    moved = [f"{n} {cpu[n].version} -> {gpu[n].version}"
             for n in sorted(gpu) if n in cpu and cpu[n].version != gpu[n].version]
    gpu_only, cpu_only = sorted(set(gpu) - set(cpu)), sorted(set(cpu) - set(gpu))
    required_by_vllm = sorted(n for n in gpu if "vllm" in gpu[n].via)
    lines = [
        f"{len(gpu)} pins: " + ", ".join(f"{n} {gpu[n].version}" for n in HEADLINE if n in gpu),
        f"vllm requires {len(required_by_vllm)} of them directly: " + ", ".join(required_by_vllm),
        f"against {CPU_LOCK}: {len(same)} pins the same, {len(moved)} other versions: " + ", ".join(moved),
        f"only in the GPU set ({len(gpu_only)}): " + ", ".join(gpu_only),
        f"only in the CPU set ({len(cpu_only)}): " + ", ".join(cpu_only),
    ]
    return "\n".join(textwrap.fill(line, 110, initial_indent="lock-gpu: ", subsequent_indent="    ",
                                   break_on_hyphens=False) for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write the resolution to {GPU_LOCK}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        resolved = Path(tmp) / "constraints-gpu.txt"
        try:
            resolve(resolved, isolated_environment())
        except subprocess.CalledProcessError as error:
            print(f"lock-gpu: the resolution failed (exit {error.returncode}); see above", file=sys.stderr)
            return 2
        print(summary(resolved))
        fresh = resolved.read_text()
    committed_path = ROOT / GPU_LOCK
    committed = committed_path.read_text() if committed_path.exists() else ""
    if fresh == committed:
        print(f"lock-gpu: {GPU_LOCK} is exactly this resolution")
        return 0
    sys.stdout.writelines(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                               f"{GPU_LOCK} (committed)", f"{GPU_LOCK} (resolved now)"))
    if args.write:
        committed_path.write_text(fresh)
        print(f"lock-gpu: wrote {GPU_LOCK}")
        return 0
    print(f"lock-gpu: {GPU_LOCK} differs from the resolution above; `make lock-gpu WRITE=1` writes it", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
