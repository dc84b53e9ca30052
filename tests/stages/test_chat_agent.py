"""`python -m pipeline.chat`, the search agent, end to end over real HTTP: the server is scripted
(the tiny model's text is random), everything else is real: the official `openai` client, the
search tool executed against the index the search_index stage builds, the tool response sent
back, the conversation rendered by our chat template exactly as training rows are. Both forms of
a tool call are read: `<tool_call>` text (any server) and structured `tool_calls` (vLLM's hermes
parser, whose compatibility with our format test_serve checks)."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import compose_params, run_stage, stage_env

from pipeline.chat.grammar import tool_call_constraints
from pipeline.config.params import load_params
from pipeline.data import chat_format
from pipeline.tools.search import SEARCH_TOOL, SearchIndex, format_results

QUERY = "hydrogen atomic number"


@pytest.fixture(scope="module")
def agent_workspace(crawled_workspace, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("agent")
    shutil.copytree(crawled_workspace / "data/dedup", ws / "data/dedup")
    compose_params(ws, "serve.max_tool_rounds=2")
    run_stage("pipeline.stages.search_index", ws)
    return ws


class Scripted:
    """An OpenAI-compatible /v1/chat/completions endpoint on a free loopback port that answers
    with the given assistant messages in turn and records every request body."""

    def __init__(self, replies: list[dict]) -> None:
        self.replies, self.requests = replies, []
        self.fail_first = False  # answer the first request with HTTP 400
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
                if owner.fail_first and len(owner.requests) == 1:
                    error = json.dumps({"error": {"message": "This model's maximum context length is 512 tokens.",
                                                  "type": "BadRequestError", "code": 400}}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                answered = len(owner.requests) - owner.fail_first
                message = owner.replies[min(answered, len(owner.replies)) - 1]
                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", **message}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _chat(ws: Path, url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.chat", "--base-url", url, "--color", "never", *args],
                          cwd=ws, env=stage_env(), input=stdin, capture_output=True, text=True, timeout=120)


TEXT_CALL = {"content": f'<think>\nI should look this up.\n</think>\n<tool_call>\n'
                        f'{{"name": "search", "arguments": {{"query": "{QUERY}"}}}}\n</tool_call>'}
STRUCTURED_CALL = {"content": "<think>\nI should look this up.\n</think>", "tool_calls": [
    {"id": "call_7", "type": "function", "function": {"name": "search", "arguments": json.dumps({"query": QUERY})}}]}
ANSWER = {"content": "<think>\nThe passage says 1.\n</think>\nHydrogen has atomic number 1."}


@pytest.mark.parametrize("form", ["text", "structured"])
def test_the_chat_loop_executes_a_search_and_answers(agent_workspace, tiny_tokenizer, form):
    server = Scripted([TEXT_CALL if form == "text" else STRUCTURED_CALL, ANSWER])
    question = "What is the atomic number of hydrogen?"
    try:
        if form == "text":  # one shot
            proc = _chat(agent_workspace, server.url, "--query", question)
        else:  # interactive: a question, then /exit
            proc = _chat(agent_workspace, server.url, stdin=f"{question}\n/exit\n")
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    first, second = server.requests  # the call, then the answer: exactly two requests
    assert first["model"] == second["model"] == "distillery"
    assert first["tools"] == second["tools"] == [SEARCH_TOOL]
    # serve.constrain_tool_calls (default): every request asks for calls decoded under the schema
    constraints = tool_call_constraints([SEARCH_TOOL])
    assert {k: first[k] for k in constraints} == {k: second[k] for k in constraints} == constraints
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert first["messages"][1]["content"] == question

    # The tool ran on the local index with the model's query; its response went back as a tool turn.
    cfg = load_params(agent_workspace / "params.yaml").search
    index = SearchIndex(agent_workspace / "data/search/index.sqlite")
    expected = format_results(index.search(QUERY, cfg.top_k), cfg.snippet_chars)
    index.close()
    assert expected.startswith("[1] ")  # the query finds passages in the sample corpus
    call_turn, tool_turn = second["messages"][2:]
    assert [c["function"]["name"] for c in call_turn["tool_calls"]] == ["search"]
    assert json.loads(call_turn["tool_calls"][0]["function"]["arguments"]) == {"query": QUERY}
    assert tool_turn == {"role": "tool", "tool_call_id": call_turn["tool_calls"][0]["id"], "content": expected}
    if form == "structured":
        assert tool_turn["tool_call_id"] == "call_7"

    # What the client sends back renders, through our template, as training rows render a search.
    rendered = chat_format.render_prompt(tiny_tokenizer, second["messages"], tools=second["tools"])
    assert (f'<tool_call>\n{{"name": "search", "arguments": {{"query": "{QUERY}"}}}}\n</tool_call><|im_end|>\n'
            f"<|im_start|>tool\n<tool_response>\n{expected}\n</tool_response><|im_end|>\n<|im_start|>assistant\n") in rendered

    out = proc.stdout
    assert "<think> I should look this up. </think>" in out
    assert f'-> tool call: search {{"query": "{QUERY}"}}' in out
    assert "<- tool response: [1] " in out
    assert out.rstrip().endswith("Hydrogen has atomic number 1.") or "Hydrogen has atomic number 1.\n" in out
    assert out.index("-> tool call") < out.index("<- tool response") < out.index("Hydrogen has atomic number 1.")


def test_the_chat_loop_stops_asking_after_max_tool_rounds(agent_workspace):
    server = Scripted([TEXT_CALL])  # a model that searches forever
    try:
        proc = _chat(agent_workspace, server.url, "--query", "hydrogen?")
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    assert len(server.requests) == 3  # serve.max_tool_rounds=2 searches, then one more request
    assert proc.stdout.count("-> tool call: search") == 2
    assert "stopped: the model asked for more than serve.max_tool_rounds=2 searches" in proc.stdout


def test_an_interactive_chat_goes_on_after_a_refused_request(agent_workspace):
    """A server error on one turn (here: a context overflow) is shown; that turn is dropped and
    the next question is sent without it."""
    server = Scripted([ANSWER])
    server.fail_first = True
    try:
        proc = _chat(agent_workspace, server.url, stdin="a very long question\nhydrogen?\n")
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    assert "(the server answered 400: " in proc.stdout and "maximum context length" in proc.stdout
    assert "Hydrogen has atomic number 1." in proc.stdout
    assert [m["content"] for m in server.requests[-1]["messages"][1:]] == ["hydrogen?"]


def test_the_chat_client_names_a_missing_server(agent_workspace):
    proc = _chat(agent_workspace, "http://127.0.0.1:9/v1", "--query", "hydrogen?")
    assert proc.returncode != 0
    assert "no server at http://127.0.0.1:9/v1" in proc.stderr and "make serve" in proc.stderr


def test_without_constrain_tool_calls_requests_carry_no_grammar(agent_workspace, tmp_path):
    import yaml

    params = yaml.safe_load((agent_workspace / "params.yaml").read_text())
    params["serve"]["constrain_tool_calls"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    shutil.copytree(agent_workspace / "data/search", tmp_path / "data/search")
    server = Scripted([ANSWER])
    try:
        proc = _chat(tmp_path, server.url, "--query", "hydrogen?")
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    assert server.requests[0]["tools"] == [SEARCH_TOOL]
    assert not {"grammar", "structured_outputs"} & set(server.requests[0])


def _call(arguments: str, name: str = "search") -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


@pytest.mark.parametrize("text", [
    "<think>\nhm < a <tool and </tool_call> x\n</think>\nThe answer.",  # free text: anything but <tool_call>
    "",
    "<think>\nLook it up.\n</think>\n" + _call('{"query": "iron melting point"}'),
    '<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>',
    _call('{"query": "a"}') + " then " + _call('{"query": "\\u00e9 b<c"}') + "\nok",
    _call('{"query": "氢 原子"}'),
    _call('{"query": "  x"}'),
    _call('{"query": "a\\"b\\n"}'),
    _call('{"query": "\u3000x"}'),
    _call('{"query": "a"}', name="find"),       # an undeclared tool
    _call('{"query": ""}'),                     # empty, blank: tool_call_error's "is empty"
    _call('{"query": "   "}'),
    _call('{"query": "\u3000"}'),
    _call('{"query": "\\n\\t"}'),
    _call('{"query": "a</tool_call>b"}'),       # would end the call for every parser
    _call('{"query": "a", "k": 1}'),            # an unknown argument
    _call("{}"),                                # a missing one
    _call('{"query": 3}'),
    _call('{"query": "a\nb"}'),                 # a raw control character: not JSON
    "<tool_call>hello</tool_call>",
    '<tool_call>\n{"name": "search"',          # a call never closed
])
def test_tool_call_constraints_admit_exactly_the_valid_calls(text):
    """Both forms of the constraint (vLLM's structural tag; llama.cpp's GBNF, read here by
    xgrammar, whose EBNF is GBNF's; llama.cpp's own reading is test_serve's) accept a reply
    exactly when every call opened in it is closed, parses and validates (chat_format)."""
    import xgrammar

    parsed = chat_format.parse_output(text)
    valid = (not parsed["invalid_tool_calls"] and text.count(chat_format.TOOL_CALL_OPEN) == len(parsed["tool_calls"])
             and all(chat_format.tool_call_error(c, [SEARCH_TOOL]) is None for c in parsed["tool_calls"]))
    constraints = tool_call_constraints([SEARCH_TOOL])
    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), cache_enabled=False)
    for grammar in (xgrammar.Grammar.from_structural_tag(constraints["structured_outputs"]["structural_tag"]),
                    xgrammar.Grammar.from_ebnf(constraints["grammar"])):
        matcher = xgrammar.GrammarMatcher(compiler.compile_grammar(grammar), terminate_without_stop_token=True)
        assert (matcher.accept_string(text) and matcher.is_terminated()) == valid, (text, valid)
