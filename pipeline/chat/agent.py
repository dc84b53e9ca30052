"""The search agent: chat with the served model, executing its search tool calls.

    python -m pipeline.chat                        # interactive (/reset clears, /exit or Ctrl-D ends)
    python -m pipeline.chat --query "..."          # one question, one answer
    python -m pipeline.chat --model base           # the base model instead of base + adapter
    python -m pipeline.chat --base-url http://host:port/v1

It talks to `make serve` (vLLM) or `make serve-gguf` (llama.cpp) through the `openai` client, reads tool calls in
either form (structured `tool_calls` or `<tool_call>` blocks) and runs them with the code synthesis used to write the
training data's tool responses. Docs: docs/serving.md; the tool-call grammar: docs/design/chat-format.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

from pipeline.chat.figures import knowledge_lines
from pipeline.chat.grammar import tool_call_constraints
from pipeline.config import Sections, sections_or_exit
from pipeline.config.chat import ChatConfig
from pipeline.config.search import SearchConfig
from pipeline.config.serve import ServeConfig
from pipeline.data import chat_format
from pipeline.paths import INDEX
from pipeline.tools.loop import tool_loop
from pipeline.tools.search import SEARCH_TOOL, SearchIndex, execute_call


class Printer:
    """Terminal output: dim thinking, marked tool calls; no colour when not a terminal or NO_COLOR is set."""

    def __init__(self, out=sys.stdout, color: bool | None = None) -> None:
        self.out = out
        self.color = color if color is not None else (out.isatty() and "NO_COLOR" not in os.environ)

    def _style(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def think(self, text: str) -> None:
        print(self._style("2", "<think> " + text.strip().replace("\n", "\n        ") + " </think>"), file=self.out)

    def tool_call(self, name: str, arguments) -> None:
        args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        print(self._style("1;36", f"-> tool call: {name} {args}"), file=self.out)

    def tool_result(self, text: str, width: int = 160) -> None:
        """Each passage the search returned: its head, then the start of its text (what the model
        reads before it thinks again)."""
        lines = []
        for block in text.split("\n\n") if text else [""]:
            head, _, body = block.partition("\n")
            body = " ".join(body.split())
            lines.append(head + (("\n      " + body[:width] + ("…" if len(body) > width else "")) if body else ""))
        print(self._style("36", "<- tool response: " + "\n   ".join(lines)), file=self.out)

    def answer(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(self._style("33", text), file=self.out, flush=True)


def read_reply(message) -> tuple[str | None, list[dict], list[str], str]:
    """(think, calls, invalid calls, answer) of an OpenAI chat message in either tool-call form.
    A call is {"id", "name", "arguments"} with arguments parsed from JSON where they are JSON."""
    parsed = chat_format.parse_output(message.content or "")
    calls = [{"id": f"call_{uuid.uuid4().hex[:12]}", "name": c["name"], "arguments": c["arguments"]}
             for c in parsed["tool_calls"]]
    invalid = list(parsed["invalid_tool_calls"])
    for tc in message.tool_calls or []:
        try:
            arguments = json.loads(tc.function.arguments or "{}")
        except json.JSONDecodeError:
            invalid.append(f'{{"name": {json.dumps(tc.function.name)}, "arguments": {tc.function.arguments}}}')
            continue
        calls.append({"id": tc.id or f"call_{uuid.uuid4().hex[:12]}", "name": tc.function.name, "arguments": arguments})
    return parsed["think"], calls, invalid, parsed["answer"]


def execute(call: dict, index: SearchIndex, params: Sections) -> str:
    """The tool response for one call: search results, or what is wrong with the call."""
    return execute_call(call, index, params.search.top_k, params.search.snippet_chars)


def ask(client, model: str, messages: list[dict], index: SearchIndex, params: Sections, printer: Printer) -> str:
    """One user turn (already the last of `messages`): call the model, execute its searches,
    send their results back, until it answers. Appends every turn to `messages`; returns the answer."""
    cfg = params.serve
    said = {}
    constraints = tool_call_constraints([SEARCH_TOOL]) if cfg.constrain_tool_calls else None

    def respond(_: list[int]) -> list[list[dict]]:
        reply = client.chat.completions.create(model=model, messages=messages, tools=[SEARCH_TOOL],
                                               temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                                               extra_body=constraints)
        think, calls, invalid, said["answer"] = read_reply(reply.choices[0].message)
        said["think"] = think
        if think:
            printer.think(think)
        for raw in invalid:
            printer.note(f"(a tool call that is not valid JSON was ignored: {raw[:200]})")
        return [calls]

    def act(_: int, calls: list[dict]) -> None:
        content = f"{chat_format.THINK_OPEN}\n{said['think']}\n{chat_format.THINK_CLOSE}" if said["think"] else ""
        messages.append({"role": "assistant", "content": content, "tool_calls": [
            {"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls]})
        for call in calls:
            printer.tool_call(call["name"], call["arguments"])
            result = execute(call, index, params)
            printer.tool_result(result)
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})

    if tool_loop(1, respond, act, cfg.max_tool_rounds)[0] == "round_limit":
        printer.note(f"(stopped: the model asked for more than serve.max_tool_rounds={cfg.max_tool_rounds} searches)")
    else:
        printer.answer(said["answer"])
        messages.append({"role": "assistant", "content": said["answer"]})
    return said["answer"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.chat",
                                     description="Chat with the served model; its search tool calls run on the local index.")
    parser.add_argument("--query", help="ask one question, print the answer and exit")
    parser.add_argument("--model", help="model name on the server (default: serve.adapter_name, the tuned model)")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: http://serve.host:serve.port/v1)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    args = parser.parse_args(argv)
    params = sections_or_exit(chat=ChatConfig, search=SearchConfig, serve=ServeConfig)
    cfg = params.serve
    try:
        index = SearchIndex(INDEX)
    except FileNotFoundError as exc:
        sys.exit(f"error: {exc} (or fetch it with `make pull`)")
    import openai

    base_url = args.base_url or f"http://{cfg.host}:{cfg.port}/v1"
    client = openai.OpenAI(base_url=base_url, api_key=os.environ.get(cfg.api_key_env) or "none", max_retries=0)
    model = args.model or cfg.adapter_name
    printer = Printer(color={"auto": None, "always": True, "never": False}[args.color])
    system = [{"role": "system", "content": params.chat.system_prompt}]
    messages = list(system)
    # what the last evaluation says this model knows, first (on stderr with --query: stdout is the answer)
    figures = knowledge_lines() if model == cfg.adapter_name else []
    try:
        if args.query is not None:
            if figures:
                print("\n".join(figures), file=sys.stderr, flush=True)
            ask(client, model, messages + [{"role": "user", "content": args.query}], index, params, printer)
            return
        for line in figures:
            printer.note(line)
        printer.note(f"chatting with {model} at {base_url}; /reset starts over, /exit or Ctrl-D ends")
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                print()
                return
            if line in ("/exit", "/quit"):
                return
            if line == "/reset":
                messages = list(system)
                continue
            if line:
                turn = len(messages)
                messages.append({"role": "user", "content": line})
                try:
                    ask(client, model, messages, index, params, printer)
                except openai.APIStatusError as exc:  # e.g. a conversation past the context: keep chatting
                    del messages[turn:]
                    printer.note(f"(the server answered {exc.status_code}: {exc.message}; /reset starts over)")
    except openai.APIConnectionError:
        sys.exit(f"error: no server at {base_url}; start one with `make serve` (or `make serve-gguf`)")
    except openai.APIStatusError as exc:
        sys.exit(f"error: {base_url} answered {exc.status_code}: {exc.message}")
    finally:
        index.close()
