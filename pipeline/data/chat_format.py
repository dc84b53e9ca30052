"""The one chat format: template, tags, messages, label masks and the parsing of model output.

Synthesis, training, evaluation, serving and export all go through this module, so the format cannot drift between
them. With `chat.template: native` every function follows the model's own (ChatML) template instead of ours.

Design: docs/design/chat-format.md.
"""

from __future__ import annotations

import json
import re

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"

# Turn delimiters: special tokens (skipped when decoding with skip_special_tokens).
CONTROL_TOKENS = [IM_START, IM_END]
# Tags the model writes as text and our parser reads back: single tokens, but kept on decode.
TAG_TOKENS = [THINK_OPEN, THINK_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE]

CHAT_TEMPLATE = (
    "{%- set ns = namespace(tools='') %}"
    "{%- if tools %}"
    "{%- set ns.tools = '\\n\\n# Tools\\nYou may call these functions. Put each call in "
    "<tool_call></tool_call> as JSON with `name` and `arguments`.\\n<tools>' %}"
    "{%- for tool in tools %}{%- set ns.tools = ns.tools + '\\n' + (tool | tojson) %}{%- endfor %}"
    "{%- set ns.tools = ns.tools + '\\n</tools>' %}"
    "{%- endif %}"
    "{%- set tool_text = ns.tools %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + tool_text + '<|im_end|>\\n' }}"
    "{%- set rest = messages[1:] %}"
    "{%- else %}"
    "{%- if tools %}{{- '<|im_start|>system\\n' + tool_text[2:] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- set rest = messages %}"
    "{%- endif %}"
    "{%- for message in rest %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{{- message['content'] or '' }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- if loop.first and message['content'] %}{{- '\\n' }}{%- endif %}"
    "{%- if not loop.first %}{{- '\\n' }}{%- endif %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{{- '<tool_call>\\n{\"name\": ' + (fn['name'] | tojson) + ', \"arguments\": ' }}"
    "{%- if fn['arguments'] is string %}{{- fn['arguments'] }}{%- else %}{{- fn['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>tool\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# The same template without the training-only `{% generation %}` markers, which only
# transformers' Jinja knows: exported models (llama.cpp, llama-cpp-python, Ollama) carry this one.
INFERENCE_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")

# Models whose tokenizer puts a BOS in front of every text (Gemma: `<bos>`) expect it in front of
# a conversation too; apply_chat_template adds no special tokens, vLLM's chat endpoint and
# llama-cpp-python's chat formatter add none after a template either. So for those tokenizers
# the template itself starts with the BOS, as Gemma's own template does.
BOS_PREFIX = "{{- bos_token }}"


OUR_TEMPLATES = frozenset({CHAT_TEMPLATE, INFERENCE_CHAT_TEMPLATE, BOS_PREFIX + CHAT_TEMPLATE,
                           BOS_PREFIX + INFERENCE_CHAT_TEMPLATE})


def is_native(tokenizer) -> bool:
    """Does the tokenizer carry a template other than ours (chat.template: native)?"""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and template not in OUR_TEMPLATES


def adds_bos(tokenizer) -> bool:
    """Does the tokenizer put its BOS in front of a text (its own add_special_tokens policy)?"""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def distillery_template(tokenizer, inference: bool = False) -> str:
    """Our chat template for this tokenizer, BOS first when the tokenizer adds one."""
    template = INFERENCE_CHAT_TEMPLATE if inference else CHAT_TEMPLATE
    return BOS_PREFIX + template if adds_bos(tokenizer) else template


def template_for(tokenizer, inference: bool = False) -> str:
    """The template this model's conversations are rendered with: the model's own (native), else
    ours (with the training-only generation markers unless `inference`)."""
    if is_native(tokenizer):
        return tokenizer.chat_template
    return distillery_template(tokenizer, inference)


def _thinking(enable_thinking: bool | None) -> dict:
    """Template kwargs: Qwen3's `enable_thinking` when set (our template has no such switch)."""
    return {} if enable_thinking is None else {"enable_thinking": enable_thinking}


# A conversation with every turn kind, rendered to learn a native template's turn markers and
# whether it can declare tools and write calls our parser reads back.
_PROBE_TOOL = {"type": "function", "function": {
    "name": "probe_search", "description": "probe tool description",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
_PROBE = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "USERQ"},
    {"role": "assistant", "content": "",
     "tool_calls": [{"type": "function", "function": {"name": "probe_search", "arguments": {"query": "QARG"}}}]},
    {"role": "tool", "content": "TOOLRESULT"},
    {"role": "assistant", "content": "FINALANSWER"},
]


# What the probes found, by template text: rendered once per template, not once per row.
_MARKERS: dict[str, tuple[str, str]] = {}
_TOOL_PROBLEMS: dict[str, str | None] = {}


def turn_markers(tokenizer) -> tuple[str, str]:
    """(assistant header, end of turn) of the tokenizer's template: the text add_generation_prompt
    appends after a user turn, and the special token the template writes after an assistant's
    content. Ours and the Qwen family's: ("<|im_start|>assistant\n", "<|im_end|>")."""
    template = template_for(tokenizer, inference=True)
    if template in _MARKERS:
        return _MARKERS[template]
    user = [{"role": "user", "content": "USERQ"}]
    bare = tokenizer.apply_chat_template(user, tokenize=False, chat_template=template)
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True, chat_template=template)
    whole = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": "FINALANSWER"}], tokenize=False,
                                          chat_template=template)
    if not prompt.startswith(bare) or "FINALANSWER" not in whole:
        raise ValueError("the chat template does not render a user turn then an assistant header")
    header = prompt[len(bare):]
    after = whole.split("FINALANSWER", 1)[1]
    specials = sorted((t for t in tokenizer.all_special_tokens if t and after.startswith(t)), key=len, reverse=True)
    if not header or not specials:
        raise ValueError(f"the chat template writes no end-of-turn token after an assistant turn (it writes {after!r})")
    _MARKERS[template] = (header, specials[0])
    return _MARKERS[template]


def native_tool_problem(tokenizer) -> str | None:
    """What a native template cannot do with tool rows: declare the tools in the prompt, write an
    assistant's call as a <tool_call> block our parser (and vLLM's hermes parser) reads back, show
    the tool's result. None when it can (Qwen2.5, Qwen3)."""
    template = tokenizer.chat_template
    if template not in _TOOL_PROBLEMS:
        text = tokenizer.apply_chat_template(_PROBE, tools=[_PROBE_TOOL], tokenize=False)
        reply = text.split("USERQ", 1)[-1].split("TOOLRESULT", 1)[0].split(turn_markers(tokenizer)[0], 1)[-1]
        if "probe tool description" not in text:
            problem = "it does not declare the tools in the prompt"
        elif parse_output(reply)["tool_calls"] != [{"name": "probe_search", "arguments": {"query": "QARG"}}]:
            problem = f"it does not write a call as {TOOL_CALL_OPEN} JSON {TOOL_CALL_CLOSE}"
        elif "TOOLRESULT" not in text:
            problem = "it does not show the tool's result"
        else:
            problem = None
        _TOOL_PROBLEMS[template] = problem
    return _TOOL_PROBLEMS[template]


def check_tool_rows(tokenizer) -> None:
    """Refuse tool rows for a native template that cannot render them, naming the fallback."""
    if is_native(tokenizer):
        problem = native_tool_problem(tokenizer)
        if problem:
            raise ValueError(f"chat.template is native, and the model's own chat template has no tool-call format "
                             f"({problem}): it cannot render the search rows. Set chat.template: distillery "
                             "(Distillery's template, with <tool_call> blocks and tool turns) for this model, "
                             "or leave the search tasks out of synth.mix")


def record_to_messages(record: dict, system_prompt: str, think: bool = False) -> list[dict]:
    """A clean question record as a plain (no tool) conversation. With `think` (the chat
    setting think_from_explanation) a record's explanation becomes the reasoning, in a think
    block before the answer; without, it follows the answer."""
    question = record["question"]
    options = record.get("options") or {}
    if options:
        question += "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
    answer = record["answer"]
    if options and answer in options:
        answer = f"{answer}. {options[answer]}"
    if record.get("explanation"):
        if think:
            answer = f"{THINK_OPEN}\n{record['explanation']}\n{THINK_CLOSE}\n{answer}"
        else:
            answer += "\n" + record["explanation"]
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]


def gold_answer(record: dict) -> str:
    """The answer alone, as the assistant gives it (an option with its letter: "B. Titanium"),
    without the explanation or any reasoning."""
    return record_to_messages({**record, "explanation": ""}, "")[2]["content"]


def encode_text(tokenizer, text: str, max_len: int | None = None) -> dict:
    """Token ids and labels of a text row (a knowledge row, no chat turns): the BOS the
    tokenizer's own policy adds (as lm-evaluation-harness encodes), the text, and the EOS, every
    token labelled. The same keys as `encode`."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    truncated = max_len is not None and len(ids) > max_len
    if truncated:
        ids = ids[:max_len]
    return {"input_ids": ids, "labels": list(ids), "truncated": truncated}


def answer_value(rec: dict) -> str:
    """The answer as a statement names it: the option's text for multiple choice, else the answer."""
    options = rec.get("options") or {}
    return options.get(rec.get("answer"), rec.get("answer") or "") if options else (rec.get("answer") or "")


def opens_think(prompt: str) -> bool:
    """Does a rendered prompt end inside an opened think block (a reasoning model's template that
    prefills `<think>\\n`)? Its completions then start with the reasoning, without the tag."""
    return prompt.rstrip().endswith(THINK_OPEN)


def prompt_and_reference(messages: list[dict]) -> tuple[list[dict], str]:
    """Split a conversation into the prompt (all but the last turn) and the reference answer."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a conversation to evaluate must end with an assistant turn")
    return messages[:-1], messages[-1]["content"]


def encode(tokenizer, messages: list[dict], tools: list[dict] | None = None, max_len: int | None = None) -> dict:
    """Token ids and labels of one conversation, ready for TRL's SFTTrainer and its collator.

    `labels` equals `input_ids` on assistant tokens (their end-of-turn token included) and is
    -100 everywhere else. Returns {"input_ids", "labels", "truncated"}; `truncated` is True
    when the conversation was cut to `max_len` tokens.
    """
    if is_native(tokenizer):
        ids, labels = native_labels(tokenizer, messages, tools)
    else:
        out = tokenizer.apply_chat_template(
            messages,
            tools=tools,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            chat_template=template_for(tokenizer),
        )
        ids = list(out["input_ids"])
        labels = [t if m else -100 for t, m in zip(ids, out["assistant_masks"], strict=True)]
    truncated = max_len is not None and len(ids) > max_len
    if truncated:
        ids, labels = ids[:max_len], labels[:max_len]
    return {"input_ids": ids, "labels": labels, "truncated": truncated}


def assistant_spans(text: str, header: str, eot: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in a rendered conversation: from the end of each
    assistant header to the end of the end-of-turn token that closes it (to the end of the text
    when none does: a cut conversation)."""
    spans, pos = [], 0
    while (start := text.find(header, pos)) >= 0:
        begin = start + len(header)
        end = text.find(eot, begin)
        end = len(text) if end < 0 else end + len(eot)
        spans.append((begin, end))
        pos = end
    return spans


def native_labels(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation in a native template, which has no generation
    markers: the conversation is rendered as the template writes it (Qwen3 writes a row without
    reasoning with an empty think block, as its non-thinking mode shows it), and a token is
    labelled when it starts inside an assistant turn's content or is its end-of-turn token.
    Tool rows need a template with a tool-call format (check_tool_rows)."""
    if tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        check_tool_rows(tokenizer)
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    spans = assistant_spans(text, *turn_markers(tokenizer))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [tok if any(b <= start < e for b, e in spans) else -100
              for tok, (start, _) in zip(ids, enc["offset_mapping"], strict=True)]
    return ids, labels


def save_tokenizer(tokenizer, out_dir) -> None:
    """`tokenizer.save_pretrained(out_dir)` without the options it was loaded with: transformers
    writes `local_files_only` (true under HF_HUB_OFFLINE=1, false without) into
    tokenizer_config.json, so the saved files, and every DVC hash after them, depended on the
    shell the stage ran in."""
    tokenizer.init_kwargs.pop("local_files_only", None)
    tokenizer.save_pretrained(out_dir)


def render_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                  enable_thinking: bool | None = None) -> str:
    """The text a model continues from: the conversation plus the assistant header
    (`enable_thinking`: Qwen3's switch, for a native template that has it; None: its default)."""
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True, chat_template=template_for(tokenizer),
        **_thinking(enable_thinking),
    )


_THINK = re.compile(re.escape(THINK_OPEN) + r"\s*(.*?)\s*" + re.escape(THINK_CLOSE), re.S)
_TOOL_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CALL_CLOSE), re.S)


def parse_output(text: str) -> dict:
    """Split an assistant output into think, tool calls and answer.

    A tool call that is not JSON with a `name` is kept as raw text under `invalid_tool_calls`,
    so that evaluation can count it instead of losing it.
    """
    text = text.split(IM_END, 1)[0]
    thinks = _THINK.findall(text)
    calls, invalid = [], []
    for raw in _TOOL_CALL.findall(text):
        try:
            call = json.loads(raw)
        except json.JSONDecodeError:
            invalid.append(raw)
            continue
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            calls.append({"name": call["name"], "arguments": call.get("arguments", {})})
        else:
            invalid.append(raw)
    answer = _TOOL_CALL.sub("", _THINK.sub("", text)).strip()
    return {
        "think": "\n".join(thinks) if thinks else None,
        "tool_calls": calls,
        "invalid_tool_calls": invalid,
        "answer": answer,
    }


def language_matches(text: str, lang: str) -> bool:
    """Chinese (`zh*`) text must be at least 30% CJK among its word characters (the test dedup
    uses to pick character shingles, over the whole text); other languages less. Text without
    word characters matches nothing."""
    from pipeline.data.text import is_cjk

    if not re.search(r"\w", text):
        return False
    cjk = is_cjk(text, sample=len(text))
    return cjk if lang.startswith("zh") else not cjk


def tool_call_error(call: dict, tools: list[dict]) -> str | None:
    """What is wrong with a parsed call ({"name", "arguments"}) against the declared tools:
    an unknown tool, arguments that are not an object, a missing, unknown, mistyped or empty
    argument. None when it fits."""
    declared = {t["function"]["name"]: t["function"] for t in tools}
    if call["name"] not in declared:
        return f"unknown tool {call['name']!r}"
    args = call["arguments"]
    if not isinstance(args, dict):
        return "arguments are not an object"
    schema = declared[call["name"]].get("parameters", {})
    types = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list}
    for name in schema.get("required", []):
        if name not in args:
            return f"missing argument {name!r}"
    for name, value in args.items():
        spec = schema.get("properties", {}).get(name)
        if spec is None:
            return f"unknown argument {name!r}"
        if not isinstance(value, types.get(spec.get("type"), object)):
            return f"argument {name!r} is not a {spec.get('type')}"
        if isinstance(value, str) and not value.strip():
            return f"argument {name!r} is empty"
    return None


def validate_assistant(text: str, lang: str | None = None, tools: list[dict] | None = None) -> str | None:
    """Check one assistant turn as a teacher (or a model) wrote it. Returns None when it is
    well-formed, else the reject reason: unbalanced_tags, empty_think, invalid_tool_call_json,
    tool_call_schema (with what is wrong), empty_answer, wrong_language."""
    for open_tag, close_tag in ((THINK_OPEN, THINK_CLOSE), (TOOL_CALL_OPEN, TOOL_CALL_CLOSE)):
        depth = 0
        for tag in re.findall(re.escape(open_tag) + "|" + re.escape(close_tag), text):
            depth += 1 if tag == open_tag else -1
            if depth not in (0, 1):
                return "unbalanced_tags"
        if depth:
            return "unbalanced_tags"
    parsed = parse_output(text)
    if parsed["think"] is not None and not parsed["think"].strip():
        return "empty_think"
    if parsed["invalid_tool_calls"]:
        return "invalid_tool_call_json"
    for call in parsed["tool_calls"]:
        error = tool_call_error(call, tools or [])
        if error:
            return f"tool_call_schema: {error}"
    if not parsed["tool_calls"] and not parsed["answer"]:
        return "empty_answer"
    prose = " ".join(filter(None, [parsed["think"], parsed["answer"]]))
    if lang and prose and not language_matches(prose, lang):
        return "wrong_language"
    return None
