"""A crawl on scrapy-redis (sites.<name>.scheduler: redis) with two worker processes and one real
redis-server: the same items and counters as a one-process crawl, and a worker SIGKILLed midway
that leaves the crawl incomplete until a rerun finishes it, fetching again only what was in flight."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import yaml

from conftest import compose_params, free_port, run_stage, stage_env
from crawlers.sample_sites import GENERATORS
from crawlers.sample_sites.serve import serve

SITE = "elements_qa"
PREFIX = f"distillery-crawl:{SITE}"


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _content(items: list[dict]) -> dict:
    """Items by id, without what depends on the server (its port, the time)."""
    return {it["id"]: {k: v for k, v in it.items() if k not in ("url", "fetched_at")} for it in items}


def _counts(metrics: dict) -> tuple:
    return metrics["dropped"], metrics["broken"], metrics["robots_denied"], metrics["items"], metrics["id_collisions"]


def test_two_workers_on_redis_crawl_what_one_process_does(redis_server, crawled_workspace, tmp_path):
    port, client = redis_server
    compose_params(tmp_path, f"sites.{SITE}.scheduler=redis", f"crawl.redis.port={port}",
                   f"sites.{SITE}.sample.port={free_port()}")
    run_stage("pipeline.crawl", tmp_path, args=[SITE])  # serves the sample site, 2 local workers

    items = _read_jsonl(tmp_path / f"data/raw/{SITE}.jsonl")
    metrics = json.loads((tmp_path / f"metrics/crawl/{SITE}.json").read_text())
    one = json.loads((crawled_workspace / f"metrics/crawl/{SITE}.json").read_text())
    truth = GENERATORS[SITE](seed=0)
    assert [it["id"] for it in items] == sorted(f"{SITE}/{i}" for i in truth.valid)
    assert _content(items) == _content(_read_jsonl(crawled_workspace / f"data/raw/{SITE}.jsonl"))
    assert _counts(metrics) == _counts(one)
    assert {**metrics["broken"], **metrics["dropped"]} == truth.planted
    assert metrics["finish_reason"] == "finished" and metrics["workers"] == 2
    assert client.keys(f"{PREFIX}*") == []  # a complete crawl leaves nothing in Redis
    assert not (tmp_path / f"data/crawl_state/{SITE}").exists()


def _in_flight(client, worker: str) -> set[str]:
    """Paths (with the query) of the worker's requests in flight, as the server's log has them."""
    paths = set()
    for member in client.zrange(f"{PREFIX}:inflight:{worker}", 0, -1):
        parts = urlsplit(pickle.loads(member)["url"])
        paths.add(parts.path + (f"?{parts.query}" if parts.query else ""))
    return paths


def test_a_killed_worker_leaves_the_crawl_incomplete_and_a_rerun_completes_it(redis_server, tmp_path):
    port, client = redis_server
    truth = GENERATORS[SITE](seed=0)
    pages = {p for p in truth.pages if p != "/robots.txt"}
    with serve(truth.pages, delay_s=0.1) as (base, log):
        params = compose_params(tmp_path, f"sites.{SITE}.scheduler=redis", f"crawl.redis.port={port}")
        data = yaml.safe_load(params.read_text())
        data["sites"][SITE].update(sample=None, start_urls=[f"{base}/qa/index.html"])
        params.write_text(yaml.safe_dump(data, allow_unicode=True))

        stage = subprocess.Popen([sys.executable, "-m", "pipeline.crawl", SITE], cwd=tmp_path, env=stage_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        victim, in_flight, deadline = None, set(), time.monotonic() + 90
        while not in_flight and time.monotonic() < deadline:  # midway, a worker with requests in flight
            time.sleep(0.02)
            if len(log) < 12:
                continue
            for worker in (w.decode() for w in client.hkeys(f"{PREFIX}:workers")):
                pid = json.loads(client.hget(f"{PREFIX}:workers", worker))["pid"]
                os.kill(pid, signal.SIGSTOP)  # frozen, its in-flight set is what it will be at the kill
                in_flight = _in_flight(client, worker)
                if in_flight:
                    victim = worker
                    os.kill(pid, signal.SIGKILL)
                    break
                os.kill(pid, signal.SIGCONT)
        assert victim, "no worker had requests in flight"
        _, output = stage.communicate(timeout=120)
        assert stage.returncode == 1 and "run it again" in output, output[-2000:]
        metrics = json.loads((tmp_path / f"metrics/crawl/{SITE}.json").read_text())
        assert metrics["finish_reason"].startswith("incomplete")
        assert _in_flight(client, victim) == in_flight  # kept in Redis for the rerun
        first = Counter(log)

        del log[:]
        run_stage("pipeline.crawl", tmp_path, args=[SITE])
        second = Counter(log)

    fetched_twice = {p for p in first if p in second and p != "/robots.txt"}
    assert fetched_twice <= in_flight, sorted(fetched_twice - in_flight)
    assert {p.split("?")[0] for p in (first + second)} >= pages - {"/private/answers.html"}  # robots.txt denies it
    items = _read_jsonl(tmp_path / f"data/raw/{SITE}.jsonl")
    assert [it["id"] for it in items] == sorted(f"{SITE}/{i}" for i in truth.valid)
    metrics = json.loads((tmp_path / f"metrics/crawl/{SITE}.json").read_text())
    assert metrics["finish_reason"] == "finished" and metrics["resumed"] is True
    assert {**metrics["broken"], **metrics["dropped"]} == truth.planted
    assert metrics["robots_denied"] == len(truth.disallowed)
    assert client.keys(f"{PREFIX}*") == []
