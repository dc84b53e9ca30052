"""evaluate's search conversations run to their end (pipeline.evaluate.converse): a scripted
model on the real search index, the tiny profile's tokenizer and chat template."""

from __future__ import annotations

import json

from conftest import compose_params

from pipeline.config.params import load_params
from pipeline.data import chat_format
from pipeline.evaluation import harness
from pipeline.generation.engines import Result
from pipeline.tools.search import SEARCH_TOOL, SearchIndex, build_index

DOCS = [
    {"id": "doc-1", "kind": "doc", "url": "http://127.0.0.1/std/ds-101.html", "chapter": "DS 101", "section": "5.2",
     "title": "Oxidizers", "text": "Oxidizers are stored apart from flammable liquids, on low shelves."},
    {"id": "doc-2", "kind": "doc", "url": "http://127.0.0.1/std/ds-102.html", "chapter": "DS 102", "section": "3.1",
     "title": "Labels", "text": "Every container carries a label with the substance and the date."},
]


def _call(query: str) -> str:
    return f"{chat_format.TOOL_CALL_OPEN}\n{json.dumps({'name': 'search', 'arguments': {'query': query}})}\n{chat_format.TOOL_CALL_CLOSE}"


def test_search_conversations_run_on_the_index_until_the_model_answers(tiny_tokenizer, tmp_path):
    build_index(DOCS, tmp_path / "index.sqlite")
    index = SearchIndex(tmp_path / "index.sqlite")
    params = load_params(compose_params(tmp_path, "eval.max_tool_rounds=2", "eval.max_model_len=4096",
                                        "eval.max_new_tokens=32"))
    system = params.chat.system_prompt
    items = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}], "tools": tools}
             for q, tools in (("How are oxidizers stored?", [SEARCH_TOOL]),      # searches once, then answers
                              ("Search for ever.", [SEARCH_TOOL]),               # searches every turn
                              ("A broken call.", [SEARCH_TOOL]),                 # a call that is not JSON
                              ("No tools here.", None))]                         # a call with no tool declared
    starts = [harness._encode(tiny_tokenizer, it["messages"], it["tools"]) for it in items]
    response_id = tiny_tokenizer.convert_tokens_to_ids(chat_format.TOOL_RESPONSE_OPEN)
    script = {0: [_call("oxidizers stored"), "Apart from flammable liquids."],
              1: [_call("labels")] * 3,
              2: [f"{chat_format.TOOL_CALL_OPEN}\n{{search oxidizers\n{chat_format.TOOL_CALL_CLOSE}"],
              3: [_call("oxidizers")]}
    seen = []

    def generate(requests):
        out = []
        for req in requests:
            ids = list(req.prompt_ids)
            item = next(i for i, s in enumerate(starts) if ids[:len(s)] == s)
            turn = ids[len(starts[item]):].count(response_id)  # tool responses sent back so far
            seen.append((item, turn, tiny_tokenizer.decode(ids[len(starts[item]):])))
            out.append(Result([script[item][turn] + chat_format.IM_END], finished=[True], tokens=[5]))
        return out

    once, always, broken, no_tools = harness.converse(generate, tiny_tokenizer, items, params, index)
    index.close()

    assert once["rounds"] == 1 and once["end"] == "answered" and len(once["turns"]) == 2
    assert chat_format.parse_output(once["turns"][-1])["answer"] == "Apart from flammable liquids."
    # the search really ran: the tool's turn is the index's result for the model's query
    assert "Oxidizers are stored apart" in once["tool_responses"][0] and "ds-101.html" in once["tool_responses"][0]
    second_prompt = next(text for item, turn, text in seen if item == 0 and turn == 1)
    assert "Oxidizers are stored apart" in second_prompt and chat_format.TOOL_CALL_OPEN in second_prompt
    assert always["rounds"] == 2 and always["end"] == "round_limit" and len(always["turns"]) == 3
    assert all("ds-102.html" in r for r in always["tool_responses"])
    # as the chat client does: an unparseable call or a call with no tool declared ends the turn
    assert broken["rounds"] == 0 and broken["end"] == "answered" and broken["tool_responses"] == []
    assert no_tools["rounds"] == 0 and no_tools["end"] == "answered"
    assert once["new_tokens"] == 10 and once["first_stopped"] and once["stopped"]


def test_a_conversation_that_outgrows_the_context_ends_there(tiny_tokenizer, tmp_path):
    build_index(DOCS, tmp_path / "index.sqlite")
    index = SearchIndex(tmp_path / "index.sqlite")
    items = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Oxidizers?"}],
              "tools": [SEARCH_TOOL]}]
    first = len(harness._encode(tiny_tokenizer, items[0]["messages"], items[0]["tools"]))
    params = load_params(compose_params(tmp_path, "eval.max_tool_rounds=2", "eval.max_new_tokens=8",
                                        f"eval.max_model_len={first + 8}"))
    calls = []

    def generate(requests):
        calls.append(len(requests))
        return [Result([_call("oxidizers") + chat_format.IM_END], finished=[True], tokens=[8]) for _ in requests]

    (conv,) = harness.converse(generate, tiny_tokenizer, items, params, index)
    index.close()
    assert calls == [1] and conv["end"] == "context_full" and conv["rounds"] == 0
