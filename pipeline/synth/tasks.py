"""The synthesis tasks: what each asks the teacher, and how an answer becomes an SFT row.

- think: question (+ gold answer) -> reasoning; the row's assistant turn is
  `<think>reasoning</think>` + the gold answer. A teacher that cannot emit the tags itself
  (`teacher.emits_tags: false`) writes the reasoning alone and the pipeline adds them; a tag
  it writes anyway makes the row unbalanced, and rejected, rather than silently cleaned.
- qgen: document section -> new question-answer pairs, as JSON under a schema (structured
  outputs), validated; each pair is a new record whose source is the section.
- search: question -> {"needs_search", "query"} as JSON. The label comes from the data where
  it has one (a question generated from a document needs the documents), else from the
  teacher's decision, and the row records which. With a search: a tool call, the tool
  response from the local index (pipeline.search), then the gold answer; without: the answer.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass

from pipeline import chat
from pipeline.request_cache import Request
from pipeline.search import SEARCH_TOOL, format_results
from pipeline.teacher import Template, request_seed

DECISION_SCHEMA = {
    "type": "object",
    "properties": {"needs_search": {"type": "boolean"}, "query": {"type": "string", "maxLength": 80}},
    "required": ["needs_search", "query"],
    "additionalProperties": False,
}


def qgen_schema(pairs: int) -> dict:
    return {
        "type": "object",
        "properties": {"pairs": {"type": "array", "minItems": 1, "maxItems": pairs, "items": {
            "type": "object",
            "properties": {"question": {"type": "string", "maxLength": 100}, "answer": {"type": "string", "maxLength": 60}},
            "required": ["question", "answer"], "additionalProperties": False}}},
        "required": ["pairs"],
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class TemplateSet:
    """A task's template, and per-language ones (synth.<task>.templates_by_lang)."""

    default: Template
    by_lang: dict

    @classmethod
    def load(cls, task_cfg, key: str) -> TemplateSet:
        return cls(Template.load(task_cfg.template, f"{key}.template"),
                   {lang: Template.load(path, f"{key}.templates_by_lang.{lang}")
                    for lang, path in sorted(task_cfg.templates_by_lang.items())})

    def pick(self, lang: str | None) -> Template:
        return self.by_lang.get(lang, self.default)


def question_text(rec: dict) -> str:
    return chat.record_to_messages(rec, "")[1]["content"]


def answer_text(rec: dict) -> str:
    return chat.record_to_messages(rec, "")[2]["content"]


def request(text: str, sampling, seed: int, schema: dict | None = None, *, task: str, source: str,
            teacher=None) -> Request:
    """One request; `teacher` (TeacherConfig) says whether it is a chat turn or a raw completion
    prompt, and its stop strings."""
    completion = teacher is not None and teacher.prompt_format == "completion"
    return Request(messages=(("user", text),), n=sampling.n, temperature=sampling.temperature,
                   top_p=sampling.top_p, max_tokens=sampling.max_tokens, seed=request_seed(seed, task, source),
                   json_schema=json.dumps(schema, sort_keys=True) if schema else None,
                   completion=completion, stop=tuple(teacher.stop) if teacher is not None else (),
                   tags={"task": task, "source": source})


def think_request(rec: dict, tpl: Template, sampling, seed: int, teacher=None) -> Request:
    # $answer: the answer as the plain row gives it (explanation included); $gold: the answer alone
    return request(tpl.render(question=question_text(rec), answer=answer_text(rec), gold=chat.gold_answer(rec)),
                   sampling, seed,
                   task="think", source=rec["id"], teacher=teacher)


def think_row(rec: dict, output: str, emits_tags: bool, system_prompt: str,
              think_from_explanation: bool = False) -> tuple[list[dict], str | None]:
    """Messages of a think row and its reject reason (None when valid). The reasoning, the part
    the teacher wrote, must be in the question's language on its own."""
    if emits_tags:
        reasoning = chat.parse_output(output)["think"]
        if reasoning is None:
            return [], "missing_think"
        content = output.strip()
    else:
        reasoning = output.strip()
        if not reasoning:
            return [], "empty_think"
        # the answer as the plain rows give it: with the explanation after it, unless the
        # explanation is itself a reasoning there (then the teacher's reasoning replaces it)
        answer = chat.gold_answer(rec) if think_from_explanation else answer_text(rec)
        content = f"{chat.THINK_OPEN}\n{reasoning}\n{chat.THINK_CLOSE}\n{answer}"
    reason = chat.validate_assistant(content, lang=rec.get("lang"))
    if reason is None and rec.get("lang") and not chat.language_matches(reasoning, rec["lang"]):
        reason = "wrong_language"
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question_text(rec)},
                {"role": "assistant", "content": content}]
    return messages, reason


def qgen_request(doc: dict, tpl: Template, sampling, seed: int, pairs: int, max_chars: int = 500,
                 teacher=None) -> Request:
    text = doc["text"] if len(doc["text"]) <= max_chars else doc["text"][:max_chars] + "…"
    return request(tpl.render(pairs=pairs, title=doc.get("title") or "", text=text,
                              document=doc.get("chapter") or ""), sampling, seed,
                   qgen_schema(pairs), task="qgen", source=doc["id"], teacher=teacher)


def _clean(text: str) -> str:
    """Control characters out, whitespace collapsed: what prepare does to crawled text."""
    return " ".join("".join(c for c in text if unicodedata.category(c) != "Cc").split())


def qgen_records(doc: dict, output: str, pairs: int) -> tuple[list[dict], list[str]]:
    """New question records from a qgen output, and the reasons of the pairs rejected."""
    try:
        data = json.loads(output, strict=False)  # control characters inside strings: cleaned below
    except json.JSONDecodeError:
        return [], ["invalid_json"]
    items = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        return [], ["schema: no pairs"]
    records, reasons = [], []
    for k, item in enumerate(items[:pairs]):
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not isinstance(item.get("answer"), str):
            reasons.append("schema: pair without question and answer strings")
            continue
        question, answer = _clean(item["question"]), _clean(item["answer"])
        if len(question) < 8:
            reasons.append("short_question")
        elif not answer:
            reasons.append("empty_answer")
        elif not chat.language_matches(question + " " + answer, doc.get("lang", "en")):
            reasons.append("wrong_language")
        else:
            records.append({"id": f"{doc['id']}/q{k}", "kind": "qa", "question": question, "answer": answer,
                            "options": {}, "explanation": "", "lang": doc.get("lang", "en"), "url": doc.get("url"),
                            "split": doc["split"], "source_ids": [doc["id"]], "needs_search": True})
    return records, reasons


def search_request(rec: dict, tpl: Template, sampling, seed: int, teacher=None) -> Request:
    return request(tpl.render(question=question_text(rec)), sampling, seed, DECISION_SCHEMA,
                   task="search", source=rec["id"], teacher=teacher)


def tool_call_text(query: str) -> str:
    """The assistant turn exactly as the chat template renders a search call."""
    args = json.dumps({"query": query}, ensure_ascii=False)
    return f'{chat.TOOL_CALL_OPEN}\n{{"name": "search", "arguments": {args}}}\n{chat.TOOL_CALL_CLOSE}'


def search_row(rec: dict, output: str, index, top_k: int, snippet_chars: int,
               system_prompt: str, site_label: bool | None = None) -> tuple[list[dict], dict, str | None]:
    """Messages of a search row, facts about it (label, query, passages) and its reject reason."""
    try:
        decision = json.loads(output, strict=False)
    except json.JSONDecodeError:
        return [], {}, "invalid_decision_json"
    if not isinstance(decision, dict) or not isinstance(decision.get("needs_search"), bool):
        return [], {}, "invalid_decision_json"
    teacher_says = decision["needs_search"]
    label, source = rec.get("needs_search"), "data"
    if label is None and site_label is not None:
        label, source = site_label, "site"
    facts = {"teacher_decision": teacher_says, "label_source": source if label is not None else "teacher"}
    needs = label if label is not None else teacher_says
    question = question_text(rec)
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
    if not needs:
        messages.append({"role": "assistant", "content": answer_text(rec)})
        reason = chat.validate_assistant(answer_text(rec), lang=rec.get("lang"))
        return messages, {**facts, "needs_search": False}, reason
    query = decision.get("query") if isinstance(decision.get("query"), str) else ""
    query = _clean(query) or rec["question"]
    reason = chat.validate_assistant(tool_call_text(query), tools=[SEARCH_TOOL])
    results = index.search(query, top_k)
    messages += [
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": query}}}]},
        {"role": "tool", "content": format_results(results, snippet_chars)},
        {"role": "assistant", "content": answer_text(rec)},
    ]
    facts.update(needs_search=True, query=query, passages=[r["id"] for r in results])
    return messages, facts, reason
