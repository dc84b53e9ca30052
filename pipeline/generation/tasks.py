"""The synthesis tasks: what each asks the teacher (think, qgen, search), and how an answer becomes an SFT row.

Every candidate is checked before it becomes a row. A teacher without tags of its own (`teacher.emits_tags: false`)
writes an "Answer:" line and the pipeline adds the tags; a tag it writes anyway makes the candidate unbalanced, and
rejected, rather than silently cleaned. Where the data or the site labels a question, the search decision's
`needs_search` is fixed by the grammar. Docs: docs/stages/synth.md.
"""

from __future__ import annotations

import collections
import functools
import json
import re
import unicodedata
from dataclasses import dataclass

from pipeline.data import chat_format
from pipeline.data.text import is_cjk
from pipeline.evaluation import scoring
from pipeline.generation.request_cache import Request
from pipeline.generation.teacher import Template, request_seed
from pipeline.tools.search import SEARCH_TOOL, format_results


_RUN = re.compile(r"(\S)\1{11,}")


def repetitive(text: str, max_share: float = 0.3, min_tokens: int = 12) -> bool:
    """Does a text loop: a character written 12 times in a row ("2000000000000"), or more than
    `max_share` of its word trigrams occurring twice or more ("the tool keeps a backup, but the tool
    keeps a backup ...")? A small model's sampling falls into such loops; texts under `min_tokens`
    words are too short to tell."""
    if _RUN.search(text):
        return True
    words = scoring.answer_tokens(text)  # words, and CJK text character by character
    if len(words) < min_tokens:
        return False
    grams = list(zip(words, words[1:], words[2:]))
    return sum(n for n in collections.Counter(grams).values() if n > 1) > max_share * len(grams)


def decision_schema(label: bool | None = None, max_reason_chars: int = 160) -> dict:
    """The search decision as JSON: whether to search, the reasoning before the call (or before
    answering without one), the query. With a label from the data the decision is fixed to it
    and the teacher writes the reasoning and the query."""
    return {
        "type": "object",
        "properties": {"needs_search": {"type": "boolean"} if label is None else {"enum": [label]},
                       "reason": {"type": "string", "maxLength": max_reason_chars},
                       "query": {"type": "string", "maxLength": 80}},
        "required": ["needs_search", "reason", "query"],
        "additionalProperties": False,
    }


DECISION_SCHEMA = decision_schema()


def qgen_schema(pairs: int, max_question_chars: int = 160, max_answer_chars: int = 240) -> dict:
    return {
        "type": "object",
        "properties": {"pairs": {"type": "array", "minItems": 1, "maxItems": pairs, "items": {
            "type": "object",
            "properties": {"question": {"type": "string", "maxLength": max_question_chars},
                           "answer": {"type": "string", "maxLength": max_answer_chars}},
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
    return chat_format.record_to_messages(rec, "")[1]["content"]


def answer_text(rec: dict) -> str:
    return chat_format.record_to_messages(rec, "")[2]["content"]


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


def has_gold(rec: dict) -> bool:
    """Can a candidate's answer be checked against this record's? (Its gold answer is not empty
    once normalised.)"""
    return bool(scoring.normalise_answer(chat_format.gold_answer(rec))) if rec.get("answer") else False


def passages_text(hits: list[dict], snippet_chars: int) -> str:
    """Passages as a teacher prompt lists them: numbered, one line each, cut to snippet_chars."""
    if not hits:
        return "(none)"
    lines = []
    for n, h in enumerate(hits, start=1):
        body = " ".join(h["text"].split())
        body = body if len(body) <= snippet_chars else body[:snippet_chars - 1] + "…"
        lines.append(f"[{n}] {h['title']}: {body}" if h["title"] else f"[{n}] {body}")
    return "\n".join(lines)


def open_book(rec: dict, index, k: int, clusters: dict[str, str]) -> list[dict]:
    """The top k passages the local search finds for a question, none from the question's own
    dedup cluster (its own text, answer and near-duplicates would hand the teacher the answer
    through the same question)."""
    if not k or index is None:
        return []
    own = clusters.get(rec["id"], rec.get("cluster_id") or rec["id"])
    hits = index.search(question_text(rec), k + 10)
    return [h for h in hits if clusters.get(h["id"], h["id"]) != own][:k]


def think_request(rec: dict, tpl: Template, sampling, seed: int, teacher=None, passages: str = "(none)") -> Request:
    # $answer: the answer as the plain row gives it (explanation included); $gold: the answer alone
    return request(tpl.render(question=question_text(rec), answer=answer_text(rec), gold=chat_format.gold_answer(rec),
                              passages=passages),
                   sampling, seed,
                   task="think", source=rec["id"], teacher=teacher)


# The final-answer line a teacher writes after its reasoning: "Answer: ...", "答案：...".
_ANSWER_LINE = re.compile(r"^[ \t*#]*(?:final answer|answer|最终答案|答案)[ \t*]*[:：][ \t*]*(.*?)[ \t*]*$", re.I | re.M)
# Where a reasoning states its conclusion ("so the answer is 6", "所以答案是铝").
_CONCLUSION = re.compile(r"(?:the answer is|answer:|therefore|thus|hence|so it is|答案是|答案为|所以|因此|故)"
                         r"\s*[,，:：]?\s*([^.。;；\n]+)", re.I)
_LETTER = re.compile(r"(?:answer is|answer:|option|choice|答案[是为：:]?|选项?)\s*[（(]?([A-H])(?![A-Za-z])", re.I)


# A field label at the start of a template's line: "Question:", "Correct answer:", "推理：".
_LABEL_LINE = re.compile(r"^[ \t]*([^\W\d_][^\n:：$\[\]]{0,29}?)[ \t]*[:：]", re.M)
_FINAL_LABELS = ("Answer", "Final answer", "答案", "最终答案")


@functools.lru_cache(maxsize=64)
def template_labels(text: str) -> tuple[str, ...]:
    """The field labels of a few-shot template: those that start two of its lines or more (each
    example and the slot the teacher fills repeat them), and the final-answer labels the
    candidates are parsed by. Taken from the template, so a domain's own template (any language)
    brings its own."""
    counts = collections.Counter(m.group(1).strip() for m in _LABEL_LINE.finditer(text))
    return tuple(sorted({label for label, n in counts.items() if n >= 2} | set(_FINAL_LABELS)))


def echoed_label(reasoning: str, labels: tuple[str, ...]) -> str | None:
    """The first template label a reasoning writes as a field ("Answer:", "Correct answer:" at a
    line's start or after a space or a sentence's end), else None. A small teacher that goes on
    writing the template's next example, or its fields over again, writes them; a student trained
    on such a row learns to loop "Reasoning: ... Answer: ..." instead of ending its turn."""
    if not labels:
        return None
    found = re.search(r"(?:^|(?<=[\s.,;!?。，；！？)）]))(" + "|".join(map(re.escape, sorted(labels, key=len, reverse=True)))
                      + r")[ \t]*[:：]", reasoning)
    return found.group(1) if found else None


def reopen_think(output: str) -> str:
    """A completion of a template that opens the think block in the prompt: the opening tag
    the prompt already held goes back in front, so the output parses like any other."""
    head = output.split(chat_format.THINK_CLOSE, 1)[0]
    if chat_format.THINK_CLOSE in output and chat_format.THINK_OPEN not in head:
        return f"{chat_format.THINK_OPEN}\n{output.lstrip()}"
    return output


def split_candidate(output: str, emits_tags: bool, prefilled: bool = False) -> tuple[str | None, str | None, str | None]:
    """(reasoning, final answer, reject reason) of one teacher candidate. A teacher that emits
    tags writes <think>reasoning</think> then the answer; one that does not writes the reasoning,
    then a last line "Answer: ..." (None when it wrote none)."""
    if emits_tags:
        text = reopen_think(output) if prefilled else output
        if chat_format.validate_assistant(text) == "unbalanced_tags":
            return None, None, "unbalanced_tags"
        parsed = chat_format.parse_output(text)
        if parsed["think"] is None:
            return None, None, "missing_think"
        rest = parsed["answer"]
        lines = list(_ANSWER_LINE.finditer(rest))
        final = lines[-1].group(1).strip() if lines else rest.strip()
        return parsed["think"].strip(), final or None, None
    if any(tag in output for tag in chat_format.TAG_TOKENS):
        return None, None, "unbalanced_tags"  # the pipeline adds the tags; a teacher's own is a malformed trace
    lines = list(_ANSWER_LINE.finditer(output))
    if not lines:
        return output.strip(), None, None
    return output[:lines[-1].start()].strip(), lines[-1].group(1).strip() or None, None


def answer_matches(rec: dict, final: str, min_f1: float) -> bool:
    """Does a final answer give the record's gold: the same option (letter or option text) for
    multiple choice; for free form the normalised gold, or token F1 >= min_f1 against it."""
    options = rec.get("options") or {}
    if options:
        return scoring.extract_choice(final, options) == rec["answer"]
    score = scoring.free_form(final, chat_format.gold_answer(rec))
    return score["exact"] or score["f1"] >= min_f1


def concluded_answer(reasoning: str, rec: dict) -> str | None:
    """The last answer a reasoning states: for multiple choice the last option it names (by letter
    in "the answer is B", "选B", or by its text), as a letter; for free form what follows its last
    conclusion marker ("so the answer is", "therefore", "所以", ...). None when it states none."""
    options = rec.get("options") or {}
    if options:
        mentions = [(m.end(), m.group(1)) for m in _LETTER.finditer(reasoning) if m.group(1) in options]
        low, spans = reasoning.lower(), []
        for key, text in options.items():
            text = (text or "").strip().lower()
            start = low.find(text) if text else -1
            while start >= 0:
                spans.append((start, start + len(text), key))
                start = low.find(text, start + len(text))
        # an option inside a longer one's mention ("钛" in "钛合金") is that one's mention
        mentions += [(e, k) for b, e, k in spans
                     if not any(b2 <= b and e <= e2 and (b2, e2) != (b, e) for b2, e2, _ in spans)]
        return max(mentions)[1] if mentions else None
    found = list(_CONCLUSION.finditer(reasoning))
    return found[-1].group(1).strip() if found else None


def judge_candidate(rec: dict, output: str, *, emits_tags: bool, prefilled: bool, hint: str,
                    min_f1: float, labels: tuple[str, ...] = ()) -> dict:
    """One candidate against its source's gold answer: {"content" (the assistant turn), "verified"
    (its final answer gives the gold and its reasoning concludes no other), "reason" (None when it
    makes a row)}. Reasons: the format's (unbalanced_tags, missing_think, empty_think), no_final_answer
    (hint none and no answer line), wrong_answer, think_answer_mismatch, wrong_language,
    template_echo (the reasoning writes one of `labels`, the template's fields: template_labels),
    and repetitive (the reasoning loops)."""
    out = {"content": "", "verified": False, "reason": None, "final": None}
    reasoning, final, reason = split_candidate(output, emits_tags, prefilled)
    if reason:
        return {**out, "reason": reason}
    if not reasoning:
        return {**out, "reason": "empty_think"}
    if final is None:
        if hint != "answer":
            return {**out, "reason": "no_final_answer"}
        final = chat_format.gold_answer(rec)  # it saw the gold and wrote the reasoning alone, as asked before
    out["final"] = final
    if not answer_matches(rec, final, min_f1):
        return {**out, "reason": "wrong_answer"}
    concluded = concluded_answer(reasoning, rec)
    if concluded is not None:
        if rec.get("options"):
            differs = concluded != rec["answer"]
        else:
            differs = scoring.token_f1(concluded, final) == 0.0
        if differs:
            return {**out, "reason": "think_answer_mismatch"}
    out["verified"] = True
    # multiple choice: the option as the plain rows give it ("B. mercury"); free form: the
    # teacher's own verified answer
    answer = chat_format.gold_answer(rec) if rec.get("options") else final
    content = f"{chat_format.THINK_OPEN}\n{reasoning}\n{chat_format.THINK_CLOSE}\n{answer}"
    reason = chat_format.validate_assistant(content, lang=rec.get("lang"))
    if reason is None and rec.get("lang") and not chat_format.language_matches(reasoning, rec["lang"]):
        reason = "wrong_language"
    if reason is None and echoed_label(reasoning, labels):
        reason = "template_echo"
    if reason is None and repetitive(reasoning):
        reason = "repetitive"
    return {**out, "content": content, "reason": reason}


def think_row(rec: dict, output: str, emits_tags: bool, system_prompt: str,
              think_from_explanation: bool = False) -> tuple[list[dict], str | None]:
    """Messages of a think row written from a reasoning alone (the teacher saw the gold and
    wrote no answer line) and its reject reason (None when valid)."""
    verdict = judge_candidate(rec, output, emits_tags=emits_tags, prefilled=False, hint="answer", min_f1=0.5)
    if verdict["reason"]:
        return [], verdict["reason"]
    content = verdict["content"]
    if not think_from_explanation and not rec.get("options") and rec.get("explanation") and not emits_tags:
        content += "\n" + rec["explanation"]
    return think_messages(rec, system_prompt, content), None


def think_messages(rec: dict, system_prompt: str, content: str) -> list[dict]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": question_text(rec)},
            {"role": "assistant", "content": content}]


# Requirements in a standard: shall/should/may/must, 应/宜/可/不得/必须.
_NORMATIVE = re.compile(r"\b(?:shall|should|may|must)\b|应|宜|可|不得|必须", re.I)
_DOC_CODE = re.compile(r"^\s*([A-Z]{1,6}(?:/[A-Z]{1,3})?\s*\d+(?:[.-]\d+)*)")


def normative(doc: dict) -> int:
    """How many requirements a section states (its sentences with shall, should, may, 应, 宜, 可...)."""
    return sum(bool(_NORMATIVE.search(s)) for s in re.split(r"(?<=[.。;；!?！？])\s*", doc.get("text") or "") if s)


def clause_of(doc: dict) -> str:
    """The clause a section is, as answers cite it: "DS 101, 3.3.1" (the document's code from its
    title, then the section number); what there is of the two."""
    code = _DOC_CODE.match(doc.get("chapter") or "")
    return ", ".join(filter(None, [code.group(1) if code else "", (doc.get("section") or "").strip()]))


def doc_lang(doc: dict) -> str:
    """A section's language from its text (a site's `lang` names its main language; a site may hold
    sections in another, as a Chinese standard among English ones)."""
    return "zh" if is_cjk(doc.get("text") or "") else (doc.get("lang") or "en")


def qgen_request(doc: dict, tpl: Template, sampling, seed: int, pairs: int, max_chars: int = 500,
                 teacher=None, max_question_chars: int = 160, max_answer_chars: int = 240) -> Request:
    text = doc["text"] if len(doc["text"]) <= max_chars else doc["text"][:max_chars] + "…"
    return request(tpl.render(pairs=pairs, title=doc.get("title") or "", text=text, clause=clause_of(doc),
                              document=doc.get("chapter") or ""), sampling, seed,
                   qgen_schema(pairs, max_question_chars, max_answer_chars), task="qgen", source=doc["id"],
                   teacher=teacher)


def _clean(text: str) -> str:
    """Control characters out, whitespace collapsed: what prepare does to crawled text."""
    return " ".join("".join(c for c in text if unicodedata.category(c) != "Cc").split())


def cite(answer: str, clause: str, lang: str) -> str:
    """The answer with its clause cited at the end, unless it cites the section number already."""
    number = clause.rsplit(", ", 1)[-1] if clause else ""
    if not clause or (number and number in answer):
        return answer
    if lang.startswith("zh"):
        return f"{answer.rstrip('。')}（{clause.replace(', ', '，')}）。"
    return f"{answer.rstrip('.')} ({clause})."


_QUESTION_MARK = re.compile(r"[?？]")
# a request rather than a question: "Explain how ...", "List the ...", "简述..."
_ASKING_VERB = re.compile(r"^(?:explain|describe|list|name|give|state|define|compare|summari[sz]e|outline|identify)\b"
                          r"|^(?:请|简述|说明|列出|列举|解释|比较)", re.I)
_TRAILING_CITATION = re.compile(r"(?:\s*[(（][^()（）]*[)）]\s*[.。]?)+\s*$")
# an HTML tag, or a model's special token (<start_of_image>, <|im_end|>)
_MARKUP = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>|<\|[^<>|\s]+\|>")



def pair_reject(question: str, answer: str, source: str = "", examples: str = "") -> str | None:
    """Why a generated pair teaches nothing, or None: not_a_question (the question asks nothing:
    no question mark, no 吗/呢 at its end, no "Explain", "List", "简述"... at its start),
    answer_is_question (the answer asks another question), question_holds_answer (four in five of
    the answer's words are in the question already: a question that states its own answer, or an
    answer that repeats the question), markup (an HTML tag or a model's special token the
    section's text does not hold: the page's or the model's, not the subject's),
    copied_from_template (the question or the answer is one of `examples`', the prompt's worked
    examples, and not the section's), not_in_section (two in three of the answer's words, those of
    three letters or more and CJK characters, are not in the section: made up, or copied in part),
    repetitive (either loops)."""
    if not (_QUESTION_MARK.search(question) or question.rstrip(" 。.").endswith(("吗", "呢"))
            or _ASKING_VERB.match(question)):
        return "not_a_question"
    bare = _TRAILING_CITATION.sub("", answer).rstrip(" .。")
    if bare.endswith(("?", "？")):
        return "answer_is_question"
    words, asked = scoring.answer_tokens(bare), set(scoring.answer_tokens(question))
    if len(words) >= 4 and sum(w in asked for w in words) >= 0.8 * len(words):
        return "question_holds_answer"
    if any(tag not in source for tag in _MARKUP.findall(question + " " + answer)):
        return "markup"
    if examples:  # a question or answer of 12 characters or more, whitespace and case aside
        shown, section = _clean(examples).lower(), _clean(source).lower()
        if any(len(t) >= 12 and t in shown and t not in section
               for t in (_clean(question).lower(), _clean(bare).lower())):
            return "copied_from_template"
    content = [w for w in words if len(w) >= 3 or is_cjk(w)]
    if source and content:
        in_source = set(scoring.answer_tokens(source))
        if sum(w in in_source for w in content) < len(content) / 3:
            return "not_in_section"
    if repetitive(question) or repetitive(answer):
        return "repetitive"
    return None


def qgen_records(doc: dict, output: str, pairs: int, max_question_chars: int = 160, max_answer_chars: int = 240,
                 candidate: int = 0, checks: bool = True, examples: str = "") -> tuple[list[dict], list[str]]:
    """New question records from a qgen output (the `candidate`-th of the request's n), and the
    reasons of the pairs rejected (`examples`: the template's text, whose worked examples a pair
    must not copy). Ids: `<doc>/q<k>`, and `<doc>/c<candidate>q<k>` after the
    first candidate, so that n > 1 gives every pair its own id."""
    try:
        data = json.loads(output, strict=False)  # control characters inside strings: cleaned below
    except json.JSONDecodeError:
        return [], ["invalid_json"]
    items = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        return [], ["schema: no pairs"]
    records, reasons = [], []
    lang, clause = doc_lang(doc), clause_of(doc)
    for k, item in enumerate(items[:pairs]):
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not isinstance(item.get("answer"), str):
            reasons.append("schema: pair without question and answer strings")
            continue
        question, answer = _clean(item["question"]), _clean(item["answer"])
        if len(question) < 8:
            reasons.append("short_question")
        elif len(question) > max_question_chars:
            reasons.append("long_question")
        elif not answer:
            reasons.append("empty_answer")
        elif len(answer) > max_answer_chars:
            reasons.append("long_answer")
        elif not chat_format.language_matches(question + " " + answer, lang):
            reasons.append("wrong_language")
        elif checks and (why := pair_reject(question, answer, doc.get("text") or "", examples)):
            reasons.append(why)
        else:
            records.append({"id": f"{doc['id']}/" + (f"c{candidate}" if candidate else "") + f"q{k}",
                            "kind": "qa", "question": question,
                            "answer": cite(answer, clause, lang), "clause": clause,
                            "options": {}, "explanation": "", "lang": lang, "url": doc.get("url"),
                            "split": doc["split"], "source_ids": [doc["id"]], "needs_search": True,
                            "cluster_id": doc.get("cluster_id") or doc["id"]})
    return records, reasons


def search_request(rec: dict, tpl: Template, sampling, seed: int, teacher=None, label: bool | None = None,
                   max_reason_chars: int = 160) -> Request:
    return request(tpl.render(question=question_text(rec)), sampling, seed, decision_schema(label, max_reason_chars),
                   task="search", source=rec["id"], teacher=teacher)


def tool_call_text(query: str) -> str:
    """The assistant turn exactly as the chat template renders a search call."""
    args = json.dumps({"query": query}, ensure_ascii=False)
    return f'{chat_format.TOOL_CALL_OPEN}\n{{"name": "search", "arguments": {args}}}\n{chat_format.TOOL_CALL_CLOSE}'


def parse_decision(output: str) -> tuple[dict | None, str | None]:
    """The teacher's decision {"needs_search", "reason", "query"} and the reject reason."""
    try:
        decision = json.loads(output, strict=False)
    except json.JSONDecodeError:
        return None, "invalid_decision_json"
    if not isinstance(decision, dict) or not isinstance(decision.get("needs_search"), bool):
        return None, "invalid_decision_json"
    return {"needs_search": decision["needs_search"],
            "reason": _clean(decision["reason"]) if isinstance(decision.get("reason"), str) else "",
            "query": _clean(decision["query"]) if isinstance(decision.get("query"), str) else ""}, None


def search_label(rec: dict, site_label: bool | None) -> tuple[bool | None, str]:
    """The search label of a question and where it comes from: the data's own (questions written
    from documents need them), else the site's (sites.<name>.search_label, set by the domain), else none (the teacher decides)."""
    if rec.get("needs_search") is not None:
        return rec["needs_search"], "data"
    if site_label is not None:
        return site_label, "site"
    return None, "teacher"


def call_turn(rec: dict, decision: dict, index, top_k: int, snippet_chars: int,
              think: bool = True) -> tuple[list[dict], dict, str | None]:
    """The first assistant turn of a search row (the reasoning before the call, then the call; the
    call alone without `think`) and the tool's response from the local index; facts (query,
    passages) and the reject reason."""
    query = decision["query"] or rec["question"]
    reason = None
    if think and not decision["reason"]:
        reason = "empty_think"
    elif think and rec.get("lang") and not chat_format.language_matches(decision["reason"], rec["lang"]):
        reason = "wrong_language"
    elif think and repetitive(decision["reason"]):
        reason = "repetitive"
    content = f"{chat_format.THINK_OPEN}\n{decision['reason']}\n{chat_format.THINK_CLOSE}" if think else ""
    reason = reason or chat_format.validate_assistant((content + "\n" if content else "") + tool_call_text(query),
                                               tools=[SEARCH_TOOL])
    results = index.search(query, top_k)
    messages = [{"role": "assistant", "content": content,
                 "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": query}}}]},
                {"role": "tool", "content": format_results(results, snippet_chars)}]
    return messages, {"query": query, "passages": [r["id"] for r in results]}, reason


def search_answer_request(rec: dict, tool_response: str, tpl: Template, sampling, seed: int, teacher=None) -> Request:
    return request(tpl.render(question=question_text(rec), results=tool_response, gold=chat_format.gold_answer(rec)),
                   sampling, seed, task="search_answer", source=rec["id"], teacher=teacher)


def search_row(rec: dict, output: str, index, top_k: int, snippet_chars: int,
               system_prompt: str, site_label: bool | None = None) -> tuple[list[dict], dict, str | None]:
    """A search row with the gold answer as its last turn (the test split's rows: evaluation
    prompts, whose label and query are what is scored): messages, facts and the reject reason."""
    decision, reason = parse_decision(output)
    if reason:
        return [], {}, reason
    label, source = search_label(rec, site_label)
    needs = label if label is not None else decision["needs_search"]
    facts = {"teacher_decision": decision["needs_search"] if source == "teacher" else None,
             "label_source": source, "needs_search": needs}
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question_text(rec)}]
    if not needs:
        messages.append({"role": "assistant", "content": answer_text(rec)})
        return messages, facts, chat_format.validate_assistant(answer_text(rec), lang=rec.get("lang"))
    turn, call_facts, reason = call_turn(rec, decision, index, top_k, snippet_chars)
    messages += turn + [{"role": "assistant", "content": answer_text(rec)}]
    return messages, {**facts, **call_facts}, reason
