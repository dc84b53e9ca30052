"""scripts/gpu_check.py, the device check's preparation and install logic, without a GPU or network:
the params.yaml it carries (qwen-tiny on CUDA in bf16, generation by transformers) validates, its
CPU variant too, and the carried wheels are installed exactly where the machine lacks them or its
own version breaks a carried package's requirement."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_check_params_compose_and_validate(gpu_check, tmp_path):
    from pipeline.config.params import load_params

    out = tmp_path / "params.yaml"
    figures = gpu_check.compose_check_params(out)
    assert figures == {"overrides": gpu_check.OVERRIDES, "profile": "qwen-tiny", "device": "cuda",
                       "train_dtype": "bfloat16", "eval_dtype": "bfloat16", "eval_backend": "transformers"}
    # the dry run's change: the CPU in float32, still a valid params.yaml
    assert gpu_check.set_device(out, "cpu") == {"device": "cpu", "train.dtype": "float32", "eval.dtype": "float32"}
    params = load_params(out)
    assert (params.device, params.train.dtype, params.eval.dtype) == ("cpu", "float32", "float32")
    assert params.model.tiny.tokenizer == gpu_check.TOKENIZER
    # what the run composes on the machine for a CPU dry run with a short training
    gpu_check.compose_check_params(out, gpu_check.device_overrides("cpu", 20))
    params = load_params(out)
    assert (params.device, params.train.dtype, params.eval.dtype, params.train.max_steps) == ("cpu", "float32", "float32", 20)


def test_install_plan(gpu_check, tmp_path):
    wheels = [fake_wheel(tmp_path, "trl", "1.16.0", ["datasets>=4.7.0", "accelerate>=1.10.1"]),
              fake_wheel(tmp_path, "datasets", "5.2.0", ["fsspec<=2026.9.0,>=2023.1.0", "pyarrow>=24.0.0",
                                                         'pywin32; sys_platform == "win32"']),
              fake_wheel(tmp_path, "dill", "0.4.1")]
    fallbacks = [fake_wheel(tmp_path / "fallback", "fsspec", "2026.2.0")]
    machine = {"accelerate": "1.15.0", "fsspec": "2026.10.0", "pyarrow": "21.0.0", "dill": "0.4.1"}
    plan = gpu_check.install_plan(wheels, fallbacks, lambda name: machine.get(name))
    # trl and datasets are missing, dill is there at its version; fsspec is too new for datasets and
    # its fallback fits; pyarrow is too old and has none (too big to carry): reported
    assert [p.name for p in plan["install"]] == ["trl-1.16.0-py3-none-any.whl", "datasets-5.2.0-py3-none-any.whl",
                                                 "fsspec-2026.2.0-py3-none-any.whl"]
    assert plan["fallbacks"] == ["fsspec"]
    assert plan["broken"] == [{"package": "datasets", "requires": "pyarrow>=24.0.0", "installed": "21.0.0"}]
    # where everything is installed at the carried versions (this machine's .venv), nothing is installed
    everything = {"trl": "1.16.0", "datasets": "5.2.0", "dill": "0.4.1", "accelerate": "1.15.0",
                  "fsspec": "2026.2.0", "pyarrow": "26.0.1"}
    assert gpu_check.install_plan(wheels, fallbacks, everything.get) == {"install": [], "fallbacks": [], "alternatives": {},
                                                                          "broken": []}
    # an older datasets whose requirements the machine meets replaces the carried one, with its bundle
    alt = [[fake_wheel(tmp_path / "alt", "datasets", "5.0.0", ["pyarrow>=21.0.0", "fsspec<=2026.4.0"]),
            fake_wheel(tmp_path / "alt", "fsspec", "2026.4.0")]]
    plan = gpu_check.install_plan(wheels, fallbacks, lambda name: machine.get(name), alt)
    assert plan["alternatives"] == {"datasets": ["datasets-5.0.0-py3-none-any.whl", "fsspec-2026.4.0-py3-none-any.whl"]}
    assert [p.name for p in plan["install"]] == ["trl-1.16.0-py3-none-any.whl", "datasets-5.0.0-py3-none-any.whl",
                                                 "fsspec-2026.4.0-py3-none-any.whl"]
    assert plan["broken"] == [] and plan["fallbacks"] == []
    # where the machine meets datasets 5.2.0's requirements, the bundle stays out
    newer = {**machine, "pyarrow": "26.0.1"}
    assert gpu_check.install_plan(wheels, fallbacks, newer.get, alt)["alternatives"] == {}


def test_pins_drop_local_versions(gpu_check):
    pinned = gpu_check.pins()
    assert pinned["torch"] == "2.13.0" and pinned["trl"] == "1.16.0" and pinned["datasets"] == "5.2.0"
