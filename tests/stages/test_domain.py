"""Profiles (how to compute) and domains (what to learn) compose freely; the choice `make params`
makes sticks for later compositions, DVC's included; a crawl that keeps too few items, and a
domain that leaves too few train rows, stop with the site, selector, page or count named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import ROOT, compose_params, run_stage

from pipeline.config.params import load_params

PROFILES = sorted(p.stem for p in (ROOT / "conf/profile").glob("*.yaml"))
DOMAINS = sorted(p.stem for p in (ROOT / "conf/domain").glob("*.yaml"))
SITES = sorted(p.stem for p in (ROOT / "conf/site").glob("*.yaml"))

# A domain of documents only, as a user writes one: one site of sections, its own exam set.
DOCS_DOMAIN = """\
# @package _global_
defaults:
  - /site@sites.handbook: standards
domain: handbook
sites:
  handbook: {search_label: true, min_items: 5}
eval:
  exam_sets: [evalsets/handbook_exam.csv]
"""


@pytest.fixture(scope="module")
def conf_copy(tmp_path_factory) -> Path:
    """conf/ with a second, user-written domain beside the shipped ones."""
    conf = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(ROOT / "conf", conf, ignore=shutil.ignore_patterns("current.yaml"))
    (conf / "domain/handbook.yaml").write_text(DOCS_DOMAIN)
    return conf


def test_no_profile_names_a_site_or_an_exam_set():
    for profile in PROFILES:
        data = yaml.safe_load((ROOT / f"conf/profile/{profile}.yaml").read_text())
        text = json.dumps(data)
        assert "sites" not in data and "exam_sets" not in text and "search_label" not in text, profile
        assert not [s for s in SITES if s in text], (profile, "names a site")


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_composes_with_every_domain(conf_copy, tmp_path, profile):
    from pipeline.config.compose import compose

    for domain in [*DOMAINS, "handbook"]:
        out = tmp_path / f"{domain}.yaml"
        compose(["~selection", f"profile={profile}", f"domain={domain}"], out=out, conf_dir=conf_copy)
        params = load_params(out)
        assert (params.profile, params.domain) == (profile, domain)
        assert params.eval.general_sets == ["evalsets/general_mc.csv"]  # the forgetting check, every domain
        if domain == "handbook":
            assert list(params.sites) == ["handbook"] and params.search_labels() == {"handbook": True}
            assert params.eval.exam_files() == ["evalsets/handbook_exam.csv", "evalsets/general_mc.csv"]
            assert params.decontamination_files() == params.eval.exam_files()
            assert params.sites["handbook"].min_items == 5
    sample = load_params(tmp_path / "sample.yaml")
    assert sample.eval.exam_files() == ["evalsets/elements_exam.csv", "evalsets/general_mc.csv"]
    assert sample.search_labels() == {"elements_qa": False, "bank_gbk": False}


def test_the_choice_sticks_for_repro_and_dvc_exp_run_until_composed_again(conf_copy, tmp_path):
    from pipeline.config.compose import SELECTION, SelectionError, choose, compose

    conf = tmp_path / "conf"
    shutil.copytree(conf_copy, conf)
    out = tmp_path / "params.yaml"
    params = choose(["profile=tiny", "domain=handbook", "train.epochs=3", "chat.system_prompt='Be brief, please.'"],
                    out, conf)
    assert (params.profile, params.domain, params.train.epochs) == ("tiny", "handbook", 3)
    assert params.chat.system_prompt == "Be brief, please."
    assert params.overrides == ["profile=tiny", "domain=handbook", "train.epochs=3",
                                "chat.system_prompt='Be brief, please.'"]
    # make repro / make train: compose again, keeping the choice
    again = choose(None, out, conf)
    assert (again.profile, again.domain, again.train.epochs) == ("tiny", "handbook", 3)
    # dvc exp run -S lr=1e-5 composes conf/ itself, with DVC's composer, from conf/config.yaml
    compose(["lr=1e-5"], out=out, conf_dir=conf)
    exp = load_params(out)
    assert (exp.profile, exp.domain, exp.train.epochs, exp.lr, exp.train.lr) == ("tiny", "handbook", 3, 1e-5, 1e-5)
    # a new choice that does not compose, or does not validate, leaves the old one and params.yaml
    before = (conf / SELECTION).read_text()
    params_before = out.read_text()
    with pytest.raises(Exception, match="profile/nope"):
        choose(["profile=nope"], out, conf)
    with pytest.raises(Exception, match="train.epochs: expected a number"):
        choose(["train.epochs=many"], out, conf)
    with pytest.raises(SelectionError, match="a deletion cannot be kept"):
        choose(["~train.repeat"], out, conf)
    assert (conf / SELECTION).read_text() == before and out.read_text() == params_before
    # plain `make params`: the defaults again
    default = choose([], out, conf)
    assert not (conf / SELECTION).exists()
    assert (default.profile, default.domain, default.overrides) == ("cpu", "sample", [])


def test_a_crawl_that_keeps_too_few_items_fails_naming_site_layout_and_page(tmp_path):
    params_path = compose_params(tmp_path, "sites.elements_qa.sample.port=0")
    params = yaml.safe_load(params_path.read_text())
    for layout in params["sites"]["elements_qa"]["layouts"]:
        layout["item"] = "div.no-such-block"
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True))
    proc = run_stage("pipeline.crawl", tmp_path, check=False, args=["elements_qa"])
    assert proc.returncode != 0
    message = proc.stderr
    assert "crawl elements_qa: kept 0 items" in message and "sites.elements_qa.min_items = 1" in message
    assert "layouts[0] (item 'div.no-such-block'): 0 items; it matched nothing on" in message
    assert "e.g. http://127.0.0.1:" in message and "--preview" in message
    metrics = json.loads((tmp_path / "metrics/crawl/elements_qa.json").read_text())
    # every HTML page parsed (not robots.txt, nor the planted broken pages) matched nothing
    assert metrics["items"] == 0 and 1 < metrics["matched_nothing"]["layouts[0]"] <= metrics["pages"]
    assert (tmp_path / "data/raw/elements_qa.jsonl").exists()  # what it found (nothing) is written


def test_too_few_train_rows_stop_at_dedup_with_the_count(tmp_path):
    compose_params(tmp_path)
    rows = [{"id": f"s/{i}", "site": "s", "kind": "qa", "text": f"Question {i} about topic {i * 7919}? Answer {i}.",
             "question": f"Question {i}?", "answer": str(i), "explanation": "", "url": f"http://x/{i}"}
            for i in range(30)]
    clean = tmp_path / "data/clean/clean.jsonl"
    clean.parent.mkdir(parents=True)
    clean.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(ROOT / "evalsets", tmp_path / "evalsets")
    proc = run_stage("pipeline.stages.dedup", tmp_path, check=False)
    assert proc.returncode != 0
    train = json.loads((tmp_path / "metrics/dedup.json").read_text())["splits"]["train"]
    assert 0 < train < 50
    assert f"dedup left {train} train rows of 30 records" in proc.stderr
    assert "fewer than dedup.min_train_rows = 50, for domain 'sample'" in proc.stderr


def _item_lines(output: str) -> dict[str, str]:
    """`item <id> ...` lines of a preview, by id."""
    return {line.split()[1]: line for line in output.splitlines() if line.startswith("  item ")}


def test_preview_prints_the_items_the_crawl_writes_from_those_pages(tmp_path):
    compose_params(tmp_path, "sites.elements_qa.sample.port=0")
    run_stage("pipeline.crawl", tmp_path, args=["elements_qa"])
    raw = [json.loads(line) for line in (tmp_path / "data/raw/elements_qa.jsonl").read_text().splitlines()]
    crawled = sorted(tmp_path.rglob("*"))
    paths = ["/qa/faq.html", sorted({urlsplit(r["url"]).path for r in raw if "page-1" in r["url"]})[0]]
    proc = run_stage("pipeline.crawl", tmp_path, args=["elements_qa", "--preview", *paths])
    shown = _item_lines(proc.stdout)
    expected = {r["id"]: r for r in raw if urlsplit(r["url"]).path in paths}
    assert len(expected) > 6 and set(shown) == set(expected)
    faq = next(i for i in expected if i.startswith("elements_qa/faq-"))
    assert expected[faq]["question"][:40] in shown[faq]
    assert "layouts[1] (item 'h3'): matched 6" in proc.stdout and "links to follow (1):" in proc.stdout
    assert f"preview elements_qa: 2 pages, {len(expected)} items kept" in proc.stdout
    assert sorted(tmp_path.rglob("*")) == crawled  # nothing written: no cache, no state, no data


def test_a_folder_of_pages_is_a_site_and_crawls_to_the_same_bytes(tmp_path):
    folder = tmp_path / "pages"
    folder.mkdir()
    for n, terms in ((1, range(1, 4)), (2, range(4, 7))):
        entries = "".join(f'<dt id="t{i}">What does the term {i} of the handbook mean?</dt><dd>It means thing {i}.</dd>'
                          for i in terms)
        # page 2's links leave the folder: to the web, and up to the folder above
        older = ('<a class="older" href="2.html">Older</a>' if n == 1 else
                 '<a class="older" href="https://example.invalid/3.html">3</a><a class="older" href="../4.html">4</a>')
        end = "</body></html>" if n == 1 else ""  # page 2 leaves out the optional end tags, as SQLite's docs do
        (folder / f"{n}.html").write_text(f"<html><head><title>Terms {n}</title></head><body>"
                                          f'<dl class="glossary">{entries}</dl>{older}{end}')
    params_path = compose_params(tmp_path / "ws")
    params = yaml.safe_load(params_path.read_text())
    site = params["sites"]["elements_qa"]
    site.update(sample=None, start_urls=[(folder / "1.html").as_uri()], allowed_domains=[], follow="",
                next_page="a.older::attr(href)", title="title::text",
                layouts=[{"item": "dl.glossary dt", "id": "::attr(id)", "kind": "", "question": "::text",
                          "options": "", "option_key": "", "answer": "xpath:following-sibling::dd[1]//text()",
                          "explanation": ""}])
    params["sites"] = {"handbook": site}
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True))
    ws = tmp_path / "ws"
    proc = run_stage("pipeline.crawl", ws, args=["handbook", "--preview"])
    assert "no </html>: taken as cut off in transfer" in proc.stdout and "5 items kept" in proc.stdout
    site["html_end_check"] = False
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True))
    run_stage("pipeline.crawl", ws, args=["handbook"])
    first = (ws / "data/raw/handbook.jsonl").read_bytes()
    items = [json.loads(line) for line in first.decode().splitlines()]
    assert [i["id"] for i in items] == [f"handbook/t{i}" for i in range(1, 7)]
    assert items[0]["url"].startswith("file://") and items[0]["answer"] == "It means thing 1."
    shutil.rmtree(ws / "data/httpcache", ignore_errors=True)  # (file:// pages are not cached anyway)
    run_stage("pipeline.crawl", ws, args=["handbook"])
    assert (ws / "data/raw/handbook.jsonl").read_bytes() == first  # fetched_at: the files' own time
    assert (ws / "data/httpcache/handbook").is_dir()  # the stage's DVC output, empty
    metrics = json.loads((ws / "metrics/crawl/handbook.json").read_text())
    assert (metrics["links_outside_folder"], metrics["broken"], metrics["pages"]) == (2, {}, 2)
    proc = run_stage("pipeline.crawl", ws, args=["handbook", "--preview"])
    assert set(_item_lines(proc.stdout)) == {i["id"] for i in items}


def test_few_shot_examples_are_the_domains_and_neutral_ones_fit_every_template(conf_copy, tmp_path):
    """The cpu profile's few-shot prompts take their worked examples from the domain's folder: the
    sample keeps today's files at today's paths; any other domain gets examples that name no
    subject of the sample's, with the same placeholders, so every task renders."""
    import string

    from pipeline.config.compose import compose

    paths = {}
    for domain in ("sample", "handbook"):
        out = tmp_path / f"{domain}.yaml"
        compose(["~selection", "profile=cpu", f"domain={domain}"], out=out, conf_dir=conf_copy)
        synth = load_params(out).synth
        paths[domain] = {t: getattr(synth, t).template for t in ("think", "search", "search_answer", "qgen")}
        paths[domain]["think.zh"] = synth.think.templates_by_lang["zh"]
    assert paths["sample"]["think"] == "conf/synth/prompts/fewshot/think.txt"
    assert paths["sample"]["think.zh"] == "conf/synth/prompts/fewshot/think.zh.txt"
    assert paths["handbook"]["qgen"] == "conf/synth/prompts/fewshot/neutral/qgen.txt"

    def placeholders(path: str) -> set[str]:
        text = (ROOT / path).read_text(encoding="utf-8")
        return {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text)} - {None}

    sample_words = ("element", "atomic", "proton", "oxidi", "cylinder", "DX ", "GB/", "standard", "元素", "气瓶")
    for task, path in paths["handbook"].items():
        assert placeholders(path) == placeholders(paths["sample"][task]), task
        text = (ROOT / path).read_text(encoding="utf-8")
        assert not text.endswith("\n"), f"{path}: a completion prompt ends where the teacher goes on"
        assert not [w for w in sample_words if w.lower() in text.lower()], path


def test_a_documents_only_domain_is_evaluated_on_the_teachers_held_out_questions(tmp_path):
    """No crawled question in the test split: evaluation (and export's check) asks the questions
    the teacher wrote from the test split's sections, and the search prompts; where the domain
    has crawled test questions too, those are the `questions` set and the teacher's are `written`."""
    from pipeline.data.records import test_questions
    from pipeline.evaluation.harness import eval_items

    params = load_params(compose_params(tmp_path, "eval.exam_sets=[]", "eval.general_sets=[]"))
    split, sft = tmp_path / "split.jsonl", tmp_path / "sft"
    sft.mkdir()
    docs = [{"id": f"h/doc#{i}", "kind": "doc", "split": s, "text": f"Section {i}", "url": f"http://x/{i}"}
            for i, s in enumerate(["train", "test"])]
    split.write_text("".join(json.dumps(d) + "\n" for d in docs))

    def row(task, rid, question, answer, valid=True):
        return {"id": f"{task}/{rid}", "task": task, "split": "test", "source_ids": ["h/doc#1"], "urls": ["http://x/1"],
                "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": question},
                             {"role": "assistant", "content": answer}],
                "tools": [], "provenance": {"clause": "2.1"}, "valid": valid,
                "search": {"needs_search": True, "query": "backup keep"}}

    rows = [row("qgen", "h/doc#1/q0", "How many backups does the tool keep?", "At most 14 (2.1)."),
            row("qgen", "h/doc#1/q1", "Where are the backups written?", "To /var/backups (2.1).")]
    rows.append(row("search", "h/doc#1/q0", rows[0]["messages"][1]["content"], "At most 14 (2.1)."))
    (sft / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions, source = test_questions(split, sft)
    assert source == "teacher"
    assert [(q["id"], q["answer"], q["clause"]) for q in questions] == [
        ("h/doc#1/q0", "At most 14 (2.1).", "2.1"), ("h/doc#1/q1", "To /var/backups (2.1).", "2.1")]
    items = eval_items(params, split, sft)
    assert sorted((it["set"], it["source_id"]) for it in items) == [
        ("questions", "h/doc#1/q0"), ("questions", "h/doc#1/q1"), ("tools", "h/doc#1")]
    assert items[0]["reference_answer"] == "At most 14 (2.1)."
    # a crawled test question: the domain has a question bank; its questions are the held-out
    # loss's and the `questions` set, and the teacher's are asked beside them as `written`
    with split.open("a") as f:
        f.write(json.dumps({"id": "h/q9", "kind": "qa", "split": "test", "question": "Q?", "answer": "A",
                            "options": {}, "explanation": "", "url": "http://x/q9"}) + "\n")
    assert [q["id"] for q in test_questions(split, sft)[0]] == ["h/q9"]
    items = eval_items(params, split, sft)
    assert sorted((it["set"], it["source_id"]) for it in items) == [
        ("questions", "h/q9"), ("tools", "h/doc#1"), ("written", "h/doc#1/q0"), ("written", "h/doc#1/q1")]
    # eval.max_questions caps each set
    capped = load_params(compose_params(tmp_path, "eval.exam_sets=[]", "eval.general_sets=[]", "eval.max_questions=1"))
    assert [it["source_id"] for it in eval_items(capped, split, sft) if it["set"] == "written"] == ["h/doc#1/q0"]


def test_nested_sections_of_a_sphinx_page_are_split_each_on_its_own(tmp_path):
    """Sphinx (Debian Policy, Python's docs) nests <section>s: each is a section, and its text is
    not repeated in the one around it."""
    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "ch-files.html").write_text(
        '<html><head><title>Files</title></head><body><div class="body"><section id="files">'
        '<h1>10. Files<a class="headerlink" href="#files">¶</a></h1><p>Intro to files.</p>'
        '<section id="binaries"><h2>10.1. Binaries<a class="headerlink" href="#binaries">¶</a></h2>'
        "<p>Binaries must be stripped.</p>"
        '<section id="suid"><h3>10.1.1. Setuid<a class="headerlink" href="#suid">¶</a></h3><p>Rarely.</p></section>'
        "</section><p>After the binaries.</p></section></div></body></html>")
    items = _crawl_one_site(tmp_path / "ws", "standards", "policy", [], sample=None,
                            start_urls=[(folder / "ch-files.html").as_uri()], allowed_domains=[], follow="",
                            title="title::text", sections={"content": "div.body section", "headings": "h1,h2,h3",
                                                           "number_pattern": r"^\s*(\d+(?:\.\d+)*)\.?\s+(.+?)\s*¶?$"})
    assert sorted((i["section"], i["title"], i["text"]) for i in items) == [
        ("10", "Files", "Intro to files.\nAfter the binaries."),
        ("10.1", "Binaries", "Binaries must be stripped."),
        ("10.1.1", "Setuid", "Rarely.")]


def test_a_faqs_numbering_is_cut_from_its_questions(tmp_path):
    """The SQLite example's FAQ layout on a page of that shape: "(N) question" in bold after an
    anchor, the answer in a blockquote; question_prefix cuts the numbering, and a question
    without one is kept as written."""
    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "faq.html").write_text(
        "<html><head><title>FAQ</title></head><body>"
        '<a name="q1"></a><p><b>(1) How do I back up a database?</b></p><blockquote>Use the backup API.</blockquote>'
        '<a name="q12"></a><p><b>(12) Is (the file) locked?</b></p><blockquote>Only while writing.</blockquote>'
        '<a name="q13"></a><p><b>Why (not) threads?</b></p><blockquote>They are hard to get right.</blockquote>'
        "</body></html>")
    # the example domain's own setting, on the page
    items = _crawl_one_site(tmp_path / "ws", "sqlite_faq", "faq", ["domain=sqlite"],
                            start_urls=[(folder / "faq.html").as_uri()], min_items=1)
    assert sorted((i["id"], i["question"], i["answer"]) for i in items) == [
        ("faq/q1", "How do I back up a database?", "Use the backup API."),
        ("faq/q12", "Is (the file) locked?", "Only while writing."),
        ("faq/q13", "Why (not) threads?", "They are hard to get right.")]
    # a pattern that is not one is refused when params.yaml is read, naming the key
    params_path = tmp_path / "ws/params.yaml"
    params = yaml.safe_load(params_path.read_text())
    assert params["sites"]["faq"]["question_prefix"] == r"\(\d+\)\s*"  # conf/site/sqlite_faq.yaml's
    params["sites"]["faq"]["question_prefix"] = "(\\d+"
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True))
    with pytest.raises(Exception, match="question_prefix"):
        load_params(params_path)


def _crawl_one_site(ws, conf_site: str, name: str, overrides: list[str], **changes) -> list[dict]:
    """Crawl one site, `conf_site` of the composed params with `changes`, as `name`; its items."""
    params_path = compose_params(ws, *overrides)
    params = yaml.safe_load(params_path.read_text())
    site = params["sites"][conf_site]
    site.update(changes)
    params["sites"] = {name: site}
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True))
    run_stage("pipeline.crawl", ws, args=[name])
    return [json.loads(line) for line in (ws / f"data/raw/{name}.jsonl").read_text().splitlines()]
