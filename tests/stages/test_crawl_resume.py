"""A crawl killed with SIGKILL and run again, and a new site added with only a YAML file:
both against servers the tests run on 127.0.0.1."""

from __future__ import annotations

import ast
import json
import shutil
import signal
import subprocess
import sys
import time

import yaml
from conftest import ROOT, compose_params, run_stage, stage_env

from crawlers.sample_sites import GENERATORS
from crawlers.sample_sites.serve import html_page, serve


def _point_site_at(params_path, name: str, start_url: str) -> None:
    """Crawl `name` as a real site would be: no sample server, an absolute start URL."""
    params = yaml.safe_load(params_path.read_text())
    params["sites"][name].update(sample=None, start_urls=[start_url])
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True))


def _cached_paths(cache_dir) -> set[str]:
    paths = set()
    for meta in cache_dir.rglob("meta"):
        url = ast.literal_eval(meta.read_text())["url"]
        paths.add(url.split("127.0.0.1", 1)[1].split(":", 1)[-1].split("/", 1)[-1])
    return {"/" + p for p in paths}


def test_sigkilled_crawl_reruns_to_the_same_items_without_refetching(tmp_path):
    truth = GENERATORS["bank_gbk"](seed=0)
    with serve(truth.pages, delay_s=0.15) as (base, log):
        _point_site_at(compose_params(tmp_path), "bank_gbk", f"{base}/bank/index.html")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.crawl", "bank_gbk"], cwd=tmp_path,
                                env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while sum(p.startswith("/bank/") for p in log) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        finished = {p for p in _cached_paths(tmp_path / "data/httpcache/bank_gbk") if p.startswith("/bank/")}
        pages = {p for p in truth.pages if p.startswith("/bank/")}
        assert 0 < len(finished) < len(pages)  # killed mid-crawl, some pages done

        del log[:]
        run_stage("pipeline.crawl", tmp_path, args=["bank_gbk"])
        refetched = set(log)

    assert not finished & refetched, sorted(finished & refetched)
    assert pages - finished <= refetched
    online = (tmp_path / "data/raw/bank_gbk.jsonl").read_text()
    items = [json.loads(line) for line in online.splitlines()]
    assert {it["id"] for it in items} == {f"bank_gbk/{i}" for i in truth.valid}
    assert not (tmp_path / "data/crawl_state/bank_gbk").exists()  # a finished crawl leaves no state

    # The server is gone: with offline on, the crawl replays from the HTTP cache alone,
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["sites"]["bank_gbk"]["offline"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    run_stage("pipeline.crawl", tmp_path, args=["bank_gbk"])
    # byte for byte: fetched_at is the server's Date header, which the cache keeps
    assert (tmp_path / "data/raw/bank_gbk.jsonl").read_text() == online
    metrics = json.loads((tmp_path / "metrics/crawl/bank_gbk.json").read_text())
    assert metrics["pages_fetched"] == 0 and metrics["pages_from_cache"] == len(pages) + 1  # + robots.txt


def test_a_cleanly_stopped_crawl_resumes_from_its_queue(tmp_path):
    truth = GENERATORS["bank_gbk"](seed=0)
    with serve(truth.pages, delay_s=0.15) as (base, log):
        _point_site_at(compose_params(tmp_path), "bank_gbk", f"{base}/bank/index.html")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.crawl", "bank_gbk"], cwd=tmp_path,
                                env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while sum(p.startswith("/bank/") for p in log) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # Scrapy stops gracefully and keeps its queue (JOBDIR)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1 and "run it again to resume" in output, output[-2000:]
        assert (tmp_path / "data/crawl_state/bank_gbk/stopped-cleanly").exists()
        first = {p for p in log if p.startswith("/bank/")}

        del log[:]
        run_stage("pipeline.crawl", tmp_path, args=["bank_gbk"])
        second = {p for p in log if p.startswith("/bank/")}

    metrics = json.loads((tmp_path / "metrics/crawl/bank_gbk.json").read_text())
    assert metrics["resumed"] is True
    assert not first & second and first | second == {p for p in truth.pages if p.startswith("/bank/")}
    items = [json.loads(line) for line in (tmp_path / "data/raw/bank_gbk.jsonl").read_text().splitlines()]
    assert {it["id"] for it in items} == {f"bank_gbk/{i}" for i in truth.valid}


GLOSSARY_YAML = """\
# A glossary site: questions are <dt> terms, answers the <dd> after them (no other site does this).
spider: qa
sample: null
start_urls: [{start}]
allowed_domains: [127.0.0.1]
lang: en
follow: ""
next_page: "a.older::attr(href)"
title: "title::text"
chapter: ""
layouts:
  - item: "dl.glossary dt"
    id: "::attr(id)"
    kind: ""
    question: "::text"
    options: ""
    option_key: ""
    answer: "xpath:following-sibling::dd[1]//text()"
    explanation: ""
answer_prefix: ""
sections: null
offline: false
"""


def _glossary_site() -> tuple[dict, dict]:
    terms = {f"g-{i}": (f"What does the term number {i} of the glossary mean?", f"It means thing {i}.")
             for i in range(1, 13)}
    pages = {}
    ids = list(terms)
    for n, chunk in enumerate((ids[:6], ids[6:]), start=1):
        entries = "".join(f'<dt id="{i}">{terms[i][0]}</dt><dd><em>{terms[i][1]}</em></dd>' for i in chunk)
        older = '<a class="older" href="/glossary/2.html">Older</a>' if n == 1 else ""
        body = f"<html><head><title>Glossary {n}</title></head><body><dl class=\"glossary\">{entries}</dl>{older}</body></html>"
        pages[f"/glossary/{n}.html"] = html_page(body.encode())
    return pages, terms


def test_a_new_site_needs_only_a_yaml_file(tmp_path):
    pages, terms = _glossary_site()
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    with serve(pages) as (base, _):
        (conf / "site/glossary.yaml").write_text(GLOSSARY_YAML.format(start=f"{base}/glossary/1.html"))
        from pipeline.config.compose import compose

        compose(["~selection", "profile=tiny", "+site@sites.glossary=glossary"], out=tmp_path / "params.yaml", conf_dir=conf)
        run_stage("pipeline.crawl", tmp_path, args=["glossary"])
    items = [json.loads(line) for line in (tmp_path / "data/raw/glossary.jsonl").read_text().splitlines()]
    assert {it["id"]: (it["question"], it["answer"], it["kind"]) for it in items} == \
        {f"glossary/{i}": (q, a, "qa") for i, (q, a) in terms.items()}
