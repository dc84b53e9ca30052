"""The device a profile asks for: a gpu profile on a machine whose torch cannot use CUDA fails in
every stage that loads a model, before any work, naming the cause; the Trainer's arguments for
each profile on CUDA; the choice `make repro` and `make train` keep; hub models offline once
cached."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, compose_params, stage_env

from pipeline.runtime import device as devices

CUDA_UNUSABLE = "CUDA is not usable"


@pytest.fixture
def no_cuda(monkeypatch):
    """torch built for CUDA 13.0 that cannot use it (this machine's torch is a CPU build anyway)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")


def fake_nvidia_smi(tmp_path: Path, monkeypatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_the_cause_is_named(tmp_path, monkeypatch, no_cuda):
    assert devices.resolve("cpu", "train") == "cpu"
    assert devices.resolve("auto", "train") == "cpu"
    fake_nvidia_smi(tmp_path, monkeypatch, "echo 535.104.05")
    with pytest.raises(devices.DeviceError) as err:
        devices.resolve("cuda", "train")
    message = str(err.value)
    assert "train: params.yaml says device: cuda" in message and CUDA_UNUSABLE in message
    assert "built for CUDA 13.0" in message and "NVIDIA driver 535.104.05" in message and "580" in message
    assert "make params PROFILE=cpu" in message
    (tmp_path / "bin/nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    with pytest.raises(devices.DeviceError, match="nvidia-smi fails: the driver is not loaded"):
        devices.resolve("cuda", "train")


def test_a_cpu_build_of_torch_is_named(monkeypatch):
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(devices.DeviceError, match=r"is a CPU-only build; run `make setup` on the GPU machine"):
        devices.resolve("cuda", "evaluate")


STAGES = [("pipeline.stages.base_model", []), ("pipeline.stages.synth", []), ("pipeline.stages.train", []),
          ("pipeline.stages.evaluate", []), ("pipeline.stages.judge", []), ("pipeline.stages.merge", []),
          ("pipeline.stages.verify_export", []), ("pipeline.chat.serve", [])]


@pytest.mark.parametrize("module, argv", STAGES, ids=[m for m, _ in STAGES])
def test_every_stage_that_loads_a_model_refuses_before_any_work(module, argv, tmp_path, monkeypatch, no_cuda):
    """Under the gpu profile, in a folder with nothing but params.yaml: the stage ends with the
    device's message (not a missing input's) and writes nothing."""
    import importlib

    compose_params(tmp_path, "profile=gpu")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [module, *argv])
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        main()
    assert CUDA_UNUSABLE in str(exit_.value) and module.split(".")[-1].replace("stage", "synth") in str(exit_.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_train_under_the_gpu_profile_fails_as_a_process(tmp_path):
    """`python -m pipeline.train` (what `dvc repro -s train` runs) under the gpu profile: exit 1,
    the message, no output, and no torchrun started for GPUS=2."""
    compose_params(tmp_path, "profile=gpu")
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.train"], cwd=tmp_path, capture_output=True, text=True,
                          env={**stage_env(), "DISTILLERY_NPROC": "2"})
    assert proc.returncode == 1 and CUDA_UNUSABLE in proc.stderr and "launching" not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("profile", ["cpu", "tiny", "qwen-tiny", "gpu", "gpu-qlora-7b"])
def test_trainer_arguments_for_each_profile(profile, tmp_path, monkeypatch):
    """SFTConfig's arguments as each profile gets them on 1 and 2 processes of its device: nccl
    and bf16 on CUDA, gloo and float32 on the CPU; DDP told that every parameter is used; gradient
    checkpointing non-re-entrant (through PEFT's kbit preparation too, pipeline.models.loading)."""
    import torch

    from pipeline.config.params import load_params
    from pipeline.models.loading import GRADIENT_CHECKPOINTING_KWARGS
    from pipeline.train.trainer import trainer_arguments

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg = load_params(compose_params(tmp_path, f"profile={profile}")).train
    device = {"gpu": "cuda", "gpu-qlora-7b": "cuda"}.get(profile, "cpu")
    one, two = trainer_arguments(cfg, 1, device), trainer_arguments(cfg, 2, device)
    assert one["ddp_backend"] is None and one["ddp_find_unused_parameters"] is None
    assert two["ddp_backend"] == ("nccl" if device == "cuda" else "gloo")
    assert two["ddp_find_unused_parameters"] is False
    assert one["use_cpu"] == (device == "cpu")
    assert one["bf16"] == (device == "cuda") and not one["fp16"]
    assert (one["gradient_checkpointing"], one["gradient_checkpointing_kwargs"]) == (
        (True, {"use_reentrant": False}) if cfg.gradient_checkpointing else (False, None))
    assert GRADIENT_CHECKPOINTING_KWARGS == {"use_reentrant": False}
    effective = cfg.batch_size * cfg.grad_accum
    for args, n in ((one, 1), (two, 2)):
        assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] * n == effective
    if profile == "gpu-qlora-7b":
        assert cfg.qlora.enabled and cfg.gradient_checkpointing and cfg.qlora.compute_dtype == "bfloat16"


def test_make_repro_and_train_keep_the_choice_make_params_made():
    # the choice itself (conf/selection/current.yaml) is tested in test_domain.py
    dry = subprocess.run(["make", "-n", "train", "GPUS=2"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "pipeline.config.compose --keep" in dry and "DISTILLERY_NPROC=2" in dry
    dry = subprocess.run(["make", "-n", "repro"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "pipeline.config.compose --keep" in dry
    dry = subprocess.run(["make", "-n", "params", "PROFILE=gpu", "DOMAIN=mine"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "pipeline.config.compose profile=gpu  domain=mine" in dry or "pipeline.config.compose profile=gpu domain=mine" in dry


def test_hub_models_download_once_then_stay_offline(tmp_path, monkeypatch):
    from pipeline.runtime import hub

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(ROOT)  # where models/ is a folder: models/base is a path, not a hub id
    env: dict = {}
    assert hub.offline_when_cached(["Qwen/Qwen2.5-0.5B-Instruct"], env) == "download"
    assert "HF_HUB_OFFLINE" not in env
    snapshot = cache / "models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert hub.offline_when_cached(["Qwen/Qwen2.5-0.5B-Instruct", "models/base"], env) == "cached"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert hub.offline_when_cached(["Qwen/Other"], {"HF_HUB_OFFLINE": "0"}) == "user"
    assert hub.offline_when_cached(["models/base", None], {}) == "local"
    makefile = (ROOT / "Makefile").read_text()
    assert "export HF_HUB_OFFLINE" not in makefile  # a user's make repro may download
