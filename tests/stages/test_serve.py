"""Serving, for real, on free loopback ports (tiny profile, the `exported` workspace of conftest):

- `make serve`: vLLM's OpenAI-compatible server with the
  base model and the adapter as a LoRA module; the official `openai` client gets completions
  from both, the adapter's differ from the base's, the prompt is our chat template's rendering,
  and the API key comes from the environment only;
- our tool-call format through vLLM's hermes parser: structured `tool_calls`;
- `make serve-gguf`: llama.cpp's server on the exported GGUF, with the GGUF's own chat template;
- the chat client (`python -m pipeline.chat`) through both, and its tool calls constrained on
  both (serve.constrain_tool_calls): the random model steered into writing calls hands the agent
  only calls that parse and validate, and, unconstrained, calls that do not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, compose_params, free_port, run_stage, stage_env

from pipeline.data import chat_format
from pipeline.tools.search import SEARCH_TOOL

KEY = "sk-distillery-serve-sentinel-41c2"
QUESTION = [{"role": "system", "content": "You are a careful domain expert."},
            {"role": "user", "content": "What is the atomic number of hydrogen?"}]


def _start(ws: Path, target: str, log: Path, timeout_s: float = 600):
    """`make TARGET PORT=<free port>` with the project's Makefile in workspace `ws`; waits until
    /v1/models answers and returns (proc, url)."""
    port = free_port()
    # vLLM's engine core in the API server's process: the same server, arguments and code paths,
    # without importing vLLM in two more processes (about 20 s of each start on 2 cores).
    env = stage_env() | {"VLLM_API_KEY": KEY, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cmd = ["make", "-s", "-f", str(ROOT / "Makefile"), target, f"PORT={port}", f"BIN={Path(sys.executable).parent}"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ws, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited {proc.returncode}:\n{log.read_text()[-6000:]}")
        try:
            req = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"})
            with urllib.request.urlopen(req, timeout=5):
                return proc, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    _stop(proc)
    pytest.fail(f"the server did not answer within {timeout_s} s:\n{log.read_text()[-6000:]}")


def _cmdlines(pgid: int) -> list[str]:
    """Command lines of the processes in a process group (make and the server it started)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                out.append((stat.parent / "cmdline").read_bytes().decode(errors="replace"))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _chat_once(ws: Path, url: str) -> subprocess.CompletedProcess:
    """The chat client against a real server: the tiny model's text is random, but the round
    trip (tool declared, reply parsed, any search executed) must complete."""
    env = stage_env() | {"VLLM_API_KEY": KEY}
    return subprocess.run([sys.executable, "-m", "pipeline.chat", "--base-url", url, "--query", QUESTION[1]["content"]],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=300)


class _Steered:
    """An openai client that leans the random tiny model towards writing tool calls: the tags
    <tool_call> and </tool_call> and the quote character get a large logit bias, sampled at
    temperature 1 with fixed seeds. Unconstrained, the model then opens and closes calls around
    garbage; constrained, the call it opens is decoded under the search tool's schema, the
    quote's bias ending each query soon. The agent's own request fields (extra_body) pass through."""

    def __init__(self, client, tokenizer) -> None:
        quote = [i for i in range(len(tokenizer)) if tokenizer.decode([i]) == '"']
        tags = tokenizer.convert_tokens_to_ids([chat_format.TOOL_CALL_OPEN, chat_format.TOOL_CALL_CLOSE])
        self.bias = {str(i): 10 for i in [*tags, *quote]}
        self.client, self.replies = client, []
        self.chat = self
        self.completions = self

    def create(self, **kwargs):
        kwargs.update(logit_bias=self.bias, temperature=1.0, seed=len(self.replies), max_tokens=96)
        self.replies.append(self.client.chat.completions.create(**kwargs))
        return self.replies[-1]


def _steered_agent(ws: Path, url: str, constrain: bool, questions: int = 3) -> tuple[list[dict], list[str], str]:
    """The agent (pipeline.chat.agent.ask) against a real server, the model steered into tool
    calls (_Steered), one request a question (serve.max_tool_rounds=0: the calls are read, not
    run; the tiny model's 512-token context would not hold their results): every call that
    reached the agent, every one it could not parse, and what it printed."""
    import io

    import openai
    from transformers import AutoTokenizer

    from pipeline.chat.agent import Printer, ask, read_reply
    from pipeline.config.params import load_params
    from pipeline.tools.search import SearchIndex

    params = load_params(ws / "params.yaml")
    params.serve.max_tool_rounds, params.serve.constrain_tool_calls = 0, constrain
    client = _Steered(openai.OpenAI(base_url=url, api_key=KEY, max_retries=0), AutoTokenizer.from_pretrained(ws / "models/base"))
    out, index = io.StringIO(), SearchIndex(ws / "data/search/index.sqlite")
    try:
        for question in ("What is the melting point of iron?", "Which element has the symbol Na?",
                         "How many protons does carbon have?")[:questions]:
            messages = [{"role": "system", "content": params.chat.system_prompt}, {"role": "user", "content": question}]
            ask(client, "distillery", messages, index, params, Printer(out, color=False))
    finally:
        index.close()
    calls, invalid = [], []
    for reply in client.replies:
        _, got, bad, _ = read_reply(reply.choices[0].message)
        calls += got
        invalid += bad
    return calls, invalid, out.getvalue()


def _assert_every_call_parses(ws: Path, url: str) -> None:
    """Issue 43: a tool call the model opens is decoded under the tool's schema, so none that
    reaches the agent is invalid (it would be, unconstrained: the same steering shows it)."""
    calls, invalid, printed = _steered_agent(ws, url, constrain=True)
    assert calls and not invalid, (invalid, printed)
    assert all(chat_format.tool_call_error(c, [SEARCH_TOOL]) is None for c in calls), calls
    assert "not valid JSON" not in printed
    _, invalid, printed = _steered_agent(ws, url, constrain=False, questions=1)
    assert invalid and "not valid JSON" in printed


def _stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_make_serve_answers_the_openai_client_with_the_adapter(exported, tmp_path):
    import openai
    from transformers import AutoTokenizer

    if not (exported / "data/search/index.sqlite").exists():
        run_stage("pipeline.stages.search_index", exported)  # for the chat client
    proc, url = _start(exported, "serve", tmp_path / "vllm.log")
    try:
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        assert {m.id for m in client.models.list()} == {"base", "distillery"}
        replies = {}
        for model in ("base", "distillery"):
            r = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=8, temperature=0,
                                               logprobs=True, top_logprobs=1)
            assert r.choices[0].message.content and r.usage.completion_tokens > 0
            replies[model] = r
        # The prompt vLLM built is our chat template's rendering of the conversation, token for token.
        tokenizer = AutoTokenizer.from_pretrained(exported / "models/base")
        prompt = tokenizer(chat_format.render_prompt(tokenizer, QUESTION), add_special_tokens=False)["input_ids"]
        assert replies["distillery"].usage.prompt_tokens == replies["base"].usage.prompt_tokens == len(prompt)
        # The adapter is applied (its LoRA weights are random and non-zero): other logprobs.
        first = {m: r.choices[0].logprobs.content[0] for m, r in replies.items()}
        assert (first["base"].token, first["base"].logprob) != (first["distillery"].token, first["distillery"].logprob)
        # Declaring the search tool goes through the hermes parser's path and the template's tools block.
        r = client.chat.completions.create(model="distillery", messages=QUESTION, tools=[SEARCH_TOOL],
                                           max_tokens=8, temperature=0)
        tools_prompt = tokenizer(chat_format.render_prompt(tokenizer, QUESTION, tools=[SEARCH_TOOL]), add_special_tokens=False)
        assert r.usage.prompt_tokens == len(tools_prompt["input_ids"])
        # The key is required, and it is on no command line.
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        cmdlines = _cmdlines(proc.pid)
        assert not any(KEY in c for c in cmdlines)
        assert any("vllm.entrypoints.openai.api_server" in c and "--lora-modules\0distillery=models/adapter" in c
                   for c in cmdlines)
        chatted = _chat_once(exported, url)
        assert chatted.returncode == 0, chatted.stderr
        _assert_every_call_parses(exported, url)
    finally:
        _stop(proc)
    assert KEY not in (tmp_path / "vllm.log").read_text()


def test_our_tool_calls_come_out_of_vllms_hermes_parser_structured(exported):
    from transformers import AutoTokenizer
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers import ToolParserManager

    tokenizer = AutoTokenizer.from_pretrained(exported / "models/base")
    call = {"type": "function", "function": {"name": "search", "arguments": {"query": "氢 atomic number"}}}
    conversation = [*QUESTION, {"role": "assistant", "content": "<think>\nLook it up.\n</think>", "tool_calls": [call]}]
    rendered = tokenizer.apply_chat_template(conversation, tools=[SEARCH_TOOL], tokenize=False,
                                             chat_template=chat_format.INFERENCE_CHAT_TEMPLATE)
    output = rendered.rsplit("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n")  # what the model writes
    parser = ToolParserManager.get_tool_parser("hermes")(tokenizer)
    request = ChatCompletionRequest(model="distillery", messages=QUESTION, tools=[SEARCH_TOOL])
    info = parser.extract_tool_calls(output, request)
    assert info.tools_called and len(info.tool_calls) == 1
    assert info.tool_calls[0].function.name == "search"
    assert json.loads(info.tool_calls[0].function.arguments) == {"query": "氢 atomic number"}
    assert info.content.strip() == "<think>\nLook it up.\n</think>"  # the chat client shows it dimmed
    assert chat_format.parse_output(output)["tool_calls"] == [{"name": "search", "arguments": {"query": "氢 atomic number"}}]


def test_make_serve_gguf_answers_the_openai_client(exported, tmp_path):
    import openai
    from transformers import AutoTokenizer

    if not (exported / "data/search/index.sqlite").exists():
        run_stage("pipeline.stages.search_index", exported)  # for the chat client
    proc, url = _start(exported, "serve-gguf", tmp_path / "llama.log", timeout_s=120)
    try:
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list()] == ["distillery"]
        r = client.chat.completions.create(model="distillery", messages=QUESTION, max_tokens=8, temperature=0)
        assert r.choices[0].message.content is not None and r.usage.completion_tokens > 0
        # The GGUF's own chat template (written by convert) renders the conversation, tools included.
        tokenizer = AutoTokenizer.from_pretrained(exported / "models/base")
        for tools in (None, [SEARCH_TOOL]):
            r = client.chat.completions.create(model="distillery", messages=QUESTION, tools=tools, max_tokens=8,
                                               temperature=0)
            prompt = tokenizer(chat_format.render_prompt(tokenizer, QUESTION, tools=tools), add_special_tokens=False)
            assert r.usage.prompt_tokens == len(prompt["input_ids"])
        chatted = _chat_once(exported, url)
        assert chatted.returncode == 0, chatted.stderr
        _assert_every_call_parses(exported, url)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    finally:
        _stop(proc)


def test_an_adapter_with_trained_token_rows_is_served_merged(tmp_path):
    """vLLM cannot apply trained token rows (train.lora.train_new_tokens) as a LoRA module:
    make serve then serves the merged model under the adapter's name, and says so."""
    from pipeline.chat.serve import vllm_command
    from pipeline.config.params import load_params

    params = load_params(compose_params(tmp_path))
    base, adapter, merged = tmp_path / "base", tmp_path / "adapter", tmp_path / "merged"
    for d in (base, adapter, merged):
        d.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16, "trainable_token_indices": [5, 6]}))
    cmd = vllm_command(params, "127.0.0.1", 8000, base_dir=base, adapter_dir=adapter, merged_dir=merged,
                       platform="cpu")
    assert cmd[cmd.index("--model") + 1] == str(merged) and "--enable-lora" not in cmd
    assert cmd[cmd.index("--served-model-name") + 1] == params.serve.adapter_name
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16, "trainable_token_indices": None}))
    cmd = vllm_command(params, "127.0.0.1", 8000, base_dir=base, adapter_dir=adapter, merged_dir=merged,
                       platform="cpu")
    assert cmd[cmd.index("--model") + 1] == str(base) and "--enable-lora" in cmd


class _Forcing:
    """An openai client whose first chat request is constrained (structured outputs, a regex) to
    write one search call in the hermes format, as a trained model would: the random qwen-tiny
    cannot. What comes back still goes through vLLM's hermes parser to structured tool_calls."""

    CALL = '<tool_call>\n{"name": "search", "arguments": {"query": "melting point of iron"}}\n</tool_call>'

    def __init__(self, client):
        self.client, self.requests, self.replies = client, [], []
        self.chat = self
        self.completions = self

    def create(self, **kwargs):
        import re

        self.requests.append(json.loads(json.dumps(kwargs["messages"])))
        if not self.replies:  # the call's text as a regex (xgrammar's syntax: metacharacters escaped, newlines as is)
            regex = re.sub(r"([][{}().*+?^$|\\])", r"\\\1", self.CALL)
            kwargs["extra_body"] = {"structured_outputs": {"regex": regex}}
        reply = self.client.chat.completions.create(**kwargs)
        self.replies.append(reply)
        return reply


def test_vllm_serves_qwen_tiny_with_its_adapter_and_the_hermes_parser(qwen_exported, tmp_path):
    """qwen-tiny (Qwen3's tokenizer and its own template) on `make serve`: base + adapter, the
    hermes parser. Our agent (pipeline.chat.agent.ask) gets a structured tool call back, runs the
    search, sends the result, and the server renders that conversation exactly as
    chat_format.render_prompt does with the native template."""
    import openai
    from transformers import AutoTokenizer

    from pipeline.chat.agent import Printer, ask
    from pipeline.config.params import load_params
    from pipeline.tools.search import SearchIndex

    ws = qwen_exported
    proc, url = _start(ws, "serve", tmp_path / "vllm.log")
    try:
        client = _Forcing(openai.OpenAI(base_url=url, api_key=KEY, max_retries=0))
        params = load_params(ws / "params.yaml")
        messages = [{"role": "system", "content": params.chat.system_prompt},
                    {"role": "user", "content": "What is the melting point of iron?"}]
        index = SearchIndex(ws / "data/search/index.sqlite")
        try:
            ask(client, "distillery", messages, index, params, Printer(color=False))
        finally:
            index.close()
        first = client.replies[0].choices[0]
        assert first.finish_reason == "tool_calls" and len(first.message.tool_calls) == 1
        assert first.message.tool_calls[0].function.name == "search"
        assert json.loads(first.message.tool_calls[0].function.arguments) == {"query": "melting point of iron"}
        assert [m["role"] for m in messages[2:4]] == ["assistant", "tool"] and messages[3]["content"]
        tokenizer = AutoTokenizer.from_pretrained(ws / "models/base")
        assert chat_format.is_native(tokenizer)
        for request, reply in zip(client.requests, client.replies, strict=True):
            prompt = chat_format.render_prompt(tokenizer, request, tools=[SEARCH_TOOL])
            assert reply.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert "<|im_start|>user\n<tool_response>\n" in chat_format.render_prompt(tokenizer, client.requests[1], [SEARCH_TOOL])
        assert any("--tool-call-parser\0hermes" in c and "--lora-modules\0distillery=models/adapter" in c
                   for c in _cmdlines(proc.pid))
    finally:
        _stop(proc)
