"""Tool calls that always parse when served: the request fields that make vLLM (a structural tag)
and llama.cpp's server (a GBNF grammar) decode every tool call the model opens under the declared
tools' schema, text and thinking left free. The chat client (pipeline/chat/agent.py) sends them
with every request when serve.constrain_tool_calls is set; any OpenAI client can send
`extra_body=tool_call_constraints([SEARCH_TOOL])`. Evaluation never constrains."""

from __future__ import annotations

import json
import re

from pipeline.data import chat_format

# What may stand unescaped in a JSON string and str.strip() removes: chat_format.tool_call_error
# rejects an argument made of nothing else (or of escapes).
_BLANK = r"\x20\x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000"
_CONTROL = r'"\\\x00-\x1F'  # what a JSON string holds only escaped: `"`, `\`, control characters
_ESCAPE = r'"\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


def _hex(chars: str) -> str:
    return "".join(f"\\x{ord(c):02X}" for c in dict.fromkeys(chars))


def _avoiding(name: str, tag: str, plain: str, end: str, escape: str | None = None) -> dict[str, str]:
    """GBNF rules `name-0`..: text that never contains `tag`, then `end`. Rule `name-i` follows
    text that ends in tag[:i] (tag's first character occurs only there, so a mismatch starts
    over). `plain`: what a character class excludes besides the tag's characters; `escape`: a
    sequence that counts as one character matching no tag character."""
    assert tag[0] not in tag[1:] and not set(tag) & set('"\\'), tag
    rules = {}
    for i in range(len(tag)):
        alts = [end, f"{json.dumps(tag[0])} {name}-1"]
        if 0 < i < len(tag) - 1:  # the next character of the tag; its last one never follows
            alts.append(f"{json.dumps(tag[i])} {name}-{i + 1}")
        alts.append(f"[^{plain}{_hex(tag[0] + tag[i])}] {name}-0")
        if escape:
            alts.append(f"{escape} {name}-0")
        rules[f"{name}-{i}"] = " | ".join(dict.fromkeys(alts))
    return rules


def _call_rules(tools: list[dict]) -> dict[str, str]:
    """GBNF rules, `tc-call` at the top, for one call's JSON as our template writes it:
    {"name": <a declared tool>, "arguments": <its parameters' schema, no other keys>}. The schema
    is llama.cpp's converter's (llama_cpp.llama_grammar); its strings are then made to fit
    chat_format.tool_call_error and the parsers: not blank, and never holding </tool_call>
    (where every parser would end the call)."""
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    calls = []
    for i, tool in enumerate(tools):
        function = tool["function"]
        schema = {"type": "object", "properties": {}, **(function.get("parameters") or {}), "additionalProperties": False}
        converter.resolve_refs(schema, "")
        arguments = converter.visit(schema, f"tc-args-{i}")
        head = '{"name": ' + json.dumps(function["name"], ensure_ascii=False) + ', "arguments": '
        calls.append(f'{json.dumps(head, ensure_ascii=False)} {arguments} "}}"')
    rules = dict(line.split(" ::= ", 1) for line in converter.format_grammar().splitlines())
    rules["tc-call"] = " | ".join(calls)
    if "string" in rules:
        first = f"[^{_CONTROL}{_BLANK}{_hex(chat_format.TOOL_CALL_CLOSE[0])}]"
        rules["string"] = r'"\"" tc-lead* (' + json.dumps(chat_format.TOOL_CALL_CLOSE[0]) + f" tc-str-1 | {first} tc-str-0) space"
        rules["tc-lead"] = f"[{_BLANK}] | {_ESCAPE}"
        rules.update(_avoiding("tc-str", chat_format.TOOL_CALL_CLOSE, _CONTROL, r'"\""', _ESCAPE))
        if not any(re.search(r"\bchar\b", body) for name, body in rules.items() if name != "char"):
            rules.pop("char", None)  # the converter's string characters, replaced
    return rules


def _grammar(root: str, rules: dict[str, str]) -> str:
    return "\n".join(f"{name} ::= {body}" for name, body in {"root": root, **rules}.items()) + "\n"


def tool_call_constraints(tools: list[dict]) -> dict:
    """The request fields (openai's extra_body) that decode every tool call the model opens under
    its tool's schema, text and thinking left free: `grammar` for llama.cpp's server (the whole
    reply: text without <tool_call>, then calls), `structured_outputs` for vLLM (a structural tag
    that starts the call's grammar where the model writes <tool_call>)."""
    rules = _call_rules(tools)
    block = '"\\n"? tc-call "\\n"?'
    opening, closing = chat_format.TOOL_CALL_OPEN, chat_format.TOOL_CALL_CLOSE
    text = _avoiding("tc-text", opening, "", '""')
    reply = f"tc-text-0 ({json.dumps(opening)} {block} {json.dumps(closing)} tc-text-0)*"
    tag = {"type": "structural_tag", "format": {
        "type": "triggered_tags", "triggers": [opening],
        "tags": [{"type": "tag", "begin": opening, "content": {"type": "grammar", "grammar": _grammar(block, rules)},
                  "end": closing}]}}
    return {"grammar": _grammar(reply, rules | text), "structured_outputs": {"structural_tag": json.dumps(tag)}}
