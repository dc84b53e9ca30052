"""The configuration: the real conf/ composes and validates; bad keys and types fail by name."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import ROOT, compose_params, run_stage

from pipeline.config import ConfigError
from pipeline.config.params import load_params


def test_default_profile_is_cpu_and_tests_pin_tiny(tmp_path):
    from pipeline.config.compose import compose

    compose(["~selection"], out=tmp_path / "default.yaml", conf_dir=ROOT / "conf")
    default = load_params(tmp_path / "default.yaml")
    assert default.profile == "cpu" and default.model.source == "gguf" and default.teacher.prompt_format == "completion"
    assert default.chat.think_from_explanation and default.search_labels() == {"elements_qa": False, "bank_gbk": False}
    params = load_params(compose_params(tmp_path))
    assert params.profile == "tiny"
    assert params.model.source == "tiny"
    assert params.train.lr == params.lr
    assert set(params.sites) == {"elements_qa", "bank_gbk", "standards"}
    assert {s.spider for s in params.sites.values()} == {"qa", "bank", "doc"}


def test_top_level_lr_is_followed_by_train(tmp_path):
    # `dvc exp run -S lr=1e-5` is a Hydra override of the top-level key.
    params = load_params(compose_params(tmp_path, "lr=1e-5"))
    assert params.train.lr == pytest.approx(1e-5)
    params = load_params(compose_params(tmp_path, "train.lr=2e-5"))
    assert params.train.lr == pytest.approx(2e-5) and params.lr != pytest.approx(2e-5)


def test_hf_model_config_composes_and_validates(tmp_path):
    params = load_params(compose_params(tmp_path, "model=qwen2.5-0.5b-instruct"))
    assert params.model.source == "hf"
    assert params.model.hf_id == "Qwen/Qwen2.5-0.5B-Instruct"


def test_gpu_profiles_compose_and_validate(tmp_path):
    gpu = load_params(compose_params(tmp_path, "profile=gpu"))
    assert gpu.model.hf_id == "Qwen/Qwen2.5-0.5B-Instruct"
    assert gpu.teacher.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert (gpu.train.lora.r, gpu.train.lora.alpha, gpu.train.lr) == (16, 32, pytest.approx(2e-4))
    assert not gpu.train.qlora.enabled
    big = load_params(compose_params(tmp_path, "profile=gpu-qlora-7b"))
    assert big.model.hf_id == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert big.train.qlora.enabled and big.train.qlora.quant_type == "nf4" and big.train.qlora.double_quant
    assert (big.train.lora.r, big.train.lr, big.train.scheduler, big.train.warmup_ratio) == (
        16, pytest.approx(1e-4), "cosine", pytest.approx(0.1))
    assert big.train.gradient_checkpointing
    assert gpu.judge.model == "Qwen/Qwen2.5-7B-Instruct" and gpu.judge.format == "text"
    assert gpu.eval.dtype == "bfloat16"
    qlora = load_params(compose_params(tmp_path, "train=qlora", "train.lora.use_dora=true"))
    assert qlora.train.qlora.enabled and qlora.train.lora.use_dora and qlora.profile == "tiny"
    # the Qwen student keeps its own template; DeepSeek-R1-Distill's (not ChatML, no tools) does not
    assert (gpu.chat.template, big.chat.template) == ("native", "distillery")


# What qwen-tiny may change from gpu: the model, teacher and judge ids (and what describes those
# models: their tag habits, the judge's output form), sizes, dtypes, batch and memory settings.
QWEN_TINY_MAY_DIFFER = {
    "profile", "model.source", "model.hf_id", "model.tiny", "model.arch",
    "teacher.name", "teacher.model", "teacher.dtype", "teacher.max_model_len", "teacher.gpu_memory_utilization",
    "teacher.enforce_eager", "teacher.emits_tags", "teacher.timeout_s",
    "judge.name", "judge.model", "judge.dtype", "judge.max_model_len", "judge.gpu_memory_utilization",
    "judge.enforce_eager", "judge.timeout_s", "judge.format", "judge.max_items", "judge.max_tokens",
    "synth.max_sources", "synth.think.sampling.max_tokens", "synth.search.sampling.max_tokens",
    "synth.search_answer.sampling.max_tokens", "synth.qgen.sampling.max_tokens",
    "train.batch_size", "train.grad_accum", "train.max_seq_len", "train.dtype",
    "eval.max_exam_prompts", "eval.max_new_tokens", "eval.dtype", "eval.max_model_len",
    "eval.gpu_memory_utilization", "eval.enforce_eager",
    "serve.dtype", "serve.gpu_memory_utilization", "serve.enforce_eager", "export.outtype",
    "synth.chunk_size", "judge.chunk_size", "serve.max_model_len",
    # qwen-tiny runs wherever it is (device auto), in float32 against an f32 GGUF
    "device", "export.verify.tie_tolerance",
}


def _flat(data, prefix=""):
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def test_qwen_tiny_is_the_gpu_profile_with_tiny_sizes(tmp_path):
    """The CPU-runnable qwen-tiny shares the gpu profile's code path: the composed params differ
    only in whitelisted keys (ids, sizes, dtype, batch, memory), never in what the stages do."""
    import yaml

    gpu = yaml.safe_load(compose_params(tmp_path / "gpu", "profile=gpu").read_text())
    tiny = yaml.safe_load(compose_params(tmp_path / "qwen", "profile=qwen-tiny").read_text())
    flat_gpu, flat_tiny = _flat(gpu), _flat(tiny)
    differ = {k for k in flat_gpu.keys() | flat_tiny.keys() if flat_gpu.get(k) != flat_tiny.get(k)}
    unexplained = sorted(k for k in differ if not any(k == w or k.startswith(w + ".") for w in QWEN_TINY_MAY_DIFFER))
    assert not unexplained, unexplained
    params = load_params(tmp_path / "qwen" / "params.yaml")
    assert params.chat.template == "native" and params.model.tiny.tokenizer == "qwen3"
    assert params.model.tiny.architecture == "qwen3" and params.teacher.backend == params.judge.backend == "vllm"


@pytest.mark.parametrize("override, message", [
    ("train.lora.target_modules=all", "train.lora.target_modules: expected a list of module names or 'all-linear'"),
    ("train.select_best=false", "train.early_stopping.patience: early stopping needs select_best: true"),
    ("train.repeat.search=0", "train.repeat.search: expected a whole number of times, 1 or more, got 0"),
    ("+train.repeat.tools=2", "unknown key 'train.repeat.tools'; expected one of 'plain', 'think', 'search', 'qgen'"),
    ("judge=openai", ""),  # composes: the hosted judge's key comes from the environment
    ("judge.backend=openai", "judge.base_url: required for the openai backend"),
    ("teacher=openai +teacher.base_urls=[http://a/v1]", "teacher.base_url, base_urls: give one of them"),
    ("eval.exam_sets=[/tmp/other.csv]", "eval.exam_sets[0]: '/tmp/other.csv' is not under evalsets/"),
    ("eval.mc.max_listed_items=-1", "eval.mc.max_listed_items: expected 0 (all) or more, got -1"),
    ("eval.mc.framings=[cloze,letters]", "eval.mc.framings"),
    ("export.quant=[q8_0,q8_0]", "export.quant: a type is listed twice"),
    ("export.name=../x", "export.name: expected a file stem"),
    ("export.verify.min_quant_top1=1.5", "export.verify.min_quant_top1: expected a share in [0, 1]"),
    ("serve.adapter_name=base", "serve.adapter_name: must differ from base_name ('base')"),
    ("serve.api_key_env=sk-123", "serve.api_key_env: expected the name of an environment variable"),
    ("serve.port=70000", "serve.port: expected 0..65535"),
    ("+eval.enable_thinking=false", "eval.enable_thinking: a switch of the model's own template (Qwen3's)"),
    ("model=qwen-tiny", ""),  # the tiny Qwen composes with either template
    ("model.tiny.vocab_size=null", "model.tiny.vocab_size: required with the sentencepiece tokenizer"),
    ("+synth.think.max_sources=3", "synth.think.max_sources: only qgen and facts have their own cap"),
    ("synth.qgen.max_sources=-1", "synth.qgen.max_sources: expected 0 (all) or more, got -1"),
    ("crawl.workers=0", "crawl.workers: expected at least 1 worker process, got 0"),
    ("crawl.redis.port=0", "crawl.redis.port: expected 1..65535, got 0"),
    ("crawl.redis.basename=a*b", "crawl.redis.basename: expected a non-empty key prefix without spaces"),
    ("+crawl.redis.password=secret", "unknown key 'crawl.redis.password'"),  # only from REDIS_PASSWORD
    ("sites.bank_gbk.scheduler=redis crawl.workers=3", ""),
])
def test_bad_train_settings_are_named(tmp_path, override, message):
    if not message:
        load_params(compose_params(tmp_path, *override.split()))
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_params(compose_params(tmp_path, *override.split()))


GGUF_OUTTYPES = ("f32", "f16", "bf16")
GGUF_QUANTS = ("q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q2_k")
DTYPES = ("float32", "bfloat16", "float16")


@pytest.mark.parametrize("override, key, allowed", [
    ("model.source=ggml", "model.source", ("tiny", "hf", "gguf")),
    ("sites.standards.spider=pdf", "sites.standards.spider", ("qa", "bank", "doc", "json")),
    ("dedup.shingle=token", "dedup.shingle", ("auto", "char", "word")),
    ("dedup.lsh_storage=disk", "dedup.lsh_storage", ("memory", "redis")),
    ("sites.elements_qa.scheduler=celery", "sites.elements_qa.scheduler", ("memory", "redis")),
    ("++teacher.prompt_format=instruct", "teacher.prompt_format", ("chat", "completion")),
    ("teacher.backend=ollama", "teacher.backend", ("vllm", "openai", "transformers")),
    ("judge.backend=ollama", "judge.backend", ("vllm", "openai", "transformers")),
    ("judge.format=xml", "judge.format", ("text", "json")),
    ("eval.backend=openai", "eval.backend", ("vllm", "transformers")),
    ("train.scheduler=cosin", "train.scheduler",
     ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")),
    ("train.dtype=fp8", "train.dtype", ("auto", *DTYPES)),
    ("train.qlora.quant_type=int4", "train.qlora.quant_type", ("nf4", "fp4")),
    ("train.qlora.compute_dtype=auto", "train.qlora.compute_dtype", DTYPES),
    ("train.distributed.strategy=deepspeed", "train.distributed.strategy", ("ddp", "fsdp")),
    ("export.outtype=q8", "export.outtype", GGUF_OUTTYPES),
    ("export.quant=[q4_k_m,q3]", "export.quant[1]", GGUF_QUANTS),
    ("serve.gguf=q3", "serve.gguf", ("best", *GGUF_OUTTYPES, *GGUF_QUANTS)),
    ("+synth.mix.thinking=0.5", "synth.mix.thinking", ("plain", "think", "search", "qgen", "conversation", "text")),
])
def test_wrong_choice_names_the_key_and_the_allowed_values(tmp_path, override, key, allowed):
    # Choice keys are Literal-typed: the loader rejects a value outside the set, at any depth,
    # in a list, or as a dict key (synth.mix), naming the key and every allowed value in order.
    path = compose_params(tmp_path, override)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    listed = ", ".join(repr(a) for a in allowed)
    if key.startswith("synth.mix."):  # a dict key: reported like any unknown key
        expected = f"unknown key '{key}'; expected one of {listed}"
    else:
        bad = override.rpartition("=")[2].strip("[]").split(",")[-1]
        expected = f"{key}: expected one of {listed}, got {bad!r}"
    assert str(err.value) == f"{path}: {expected}"


def _write_modified(tmp_path, edit) -> str:
    path = compose_params(tmp_path)
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_misspelled_key_is_named_with_a_suggestion(tmp_path):
    def edit(d):
        d["train"]["lrr"] = d["train"].pop("lr")

    with pytest.raises(ConfigError) as err:
        load_params(_write_modified(tmp_path, edit))
    assert "unknown key 'train.lrr'" in str(err.value)
    assert "did you mean 'train.lr'" in str(err.value)
    assert "params.yaml" in str(err.value)


def test_wrong_type_is_named(tmp_path):
    def edit(d):
        d["model"]["tiny"]["hidden_size"] = "sixty-four"

    with pytest.raises(ConfigError, match=r"model\.tiny\.hidden_size: expected an integer"):
        load_params(_write_modified(tmp_path, edit))


def test_site_errors_are_named_with_their_path(tmp_path):
    def edit(d):
        d["sites"]["bank_gbk"]["spider"] = "crawler"

    with pytest.raises(ConfigError,
                       match=r"sites\.bank_gbk\.spider: expected one of 'qa', 'bank', 'doc', 'json', got 'crawler'"):
        load_params(_write_modified(tmp_path, edit))

    def edit_port(d):
        d["sites"]["standards"]["sample"]["port"] = "8733"

    with pytest.raises(ConfigError, match=r"sites\.standards\.sample\.port: expected an integer"):
        load_params(_write_modified(tmp_path, edit_port))


def test_missing_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"missing key 'eval.max_new_tokens'"):
        load_params(_write_modified(tmp_path, lambda d: d["eval"].pop("max_new_tokens")))


def test_stage_refuses_bad_params_before_any_work(tmp_path):
    def edit(d):
        d["train"]["epochz"] = d["train"].pop("epochs")

    _write_modified(tmp_path, edit)
    proc = run_stage("pipeline.stages.train", tmp_path, check=False)
    assert proc.returncode != 0
    assert "unknown key 'train.epochz'" in proc.stderr
    assert "did you mean 'train.epochs'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "models").exists()
    check = run_stage("pipeline.config", tmp_path, check=False)  # the user's own check says the same
    assert check.returncode != 0 and "unknown key 'train.epochz'" in check.stdout + check.stderr
