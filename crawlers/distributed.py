"""A crawl shared by several worker processes (sites.<name>.scheduler: redis), on scrapy-redis.

scrapy-redis gives the frontier in Redis (its priority queue and fingerprint dupefilter); this module adds what it
leaves out, so that a worker killed at any point loses no request and no counter is counted twice: each worker's
requests in flight, atomic enqueueing, an idle rule that waits for the live workers' follow-ups, and counters kept
per request. Requests are pickled: the Redis server must be one only the crawl uses.

Design and Redis keys: docs/scaling.md ("How the shared frontier works").
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import json
import os
import socket
import uuid

import redis
from scrapy import signals
from scrapy.exceptions import CloseSpider
from scrapy.statscollectors import MemoryStatsCollector
from scrapy_redis.scheduler import Scheduler

TRACKED = ("distillery/", "robotstxt/forbidden")
"""Stats that belong to a request and merge exactly; the others (pages fetched, HTTP statuses with
each worker's robots.txt) are summed as they are and naturally differ from a one-process crawl."""
HEARTBEAT_S = 1.0
ALIVE_TTL_S = 10
POLL_S = 0.2
"""How often a worker with an empty queue looks again while others have requests in flight."""
REQUEST_KEY = "distillery_request"

_current_request: contextvars.ContextVar[str | None] = contextvars.ContextVar("distillery_request", default=None)

_ENQUEUE = """
if ARGV[4] == '0' and redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
_POP = """
local r = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #r == 0 then return false end
redis.call('ZREM', KEYS[1], r[1])
redis.call('ZADD', KEYS[2], r[2], r[1])
return r[1]
"""
_PROGRESS = """
local queued = redis.call('ZCARD', KEYS[1])
local live, dead = 0, 0
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
  local n = redis.call('ZCARD', ARGV[1] .. ':inflight:' .. id)
  if redis.call('EXISTS', ARGV[1] .. ':alive:' .. id) == 1 then live = live + n else dead = dead + n end
end
return {queued, live, dead}
"""


def request_key(data: bytes) -> str:
    """A request's key in the ledger: the hash of its serialized form, the same after a requeue."""
    return hashlib.sha1(data).hexdigest()


def redis_client(host: str, port: int, db: int) -> redis.Redis:
    return redis.Redis(host=host, port=port, db=db, password=os.environ.get("REDIS_PASSWORD"),
                       socket_timeout=30, socket_connect_timeout=10)


def new_worker_id() -> str:
    """Starts with the UTC start time, so that sorting the workers' files sorts them by start: of
    two copies of an item from one URL (a page refetched after a kill) the later one is kept."""
    start = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return f"{start}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class CrawlState:
    """One crawl's keys in Redis, as the stage sees them (create, recover, check, delete)."""

    def __init__(self, client: redis.Redis, prefix: str):
        self.r = client
        self.p = prefix

    def exists(self) -> bool:
        return bool(self.r.exists(f"{self.p}:meta"))

    def create(self, base_url: str | None) -> None:
        self.r.hset(f"{self.p}:meta", mapping={"base_url": base_url or ""})

    def base_url(self) -> str | None:
        value = self.r.hget(f"{self.p}:meta", "base_url")
        return value.decode() if value else None

    def workers(self) -> dict[str, dict]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(f"{self.p}:workers").items()}

    def finished(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(f"{self.p}:finished").items()}

    def alive(self, worker: str) -> bool:
        return bool(self.r.exists(f"{self.p}:alive:{worker}"))

    def mark_dead(self, worker: str) -> None:
        """The stage saw this local worker die: the others need not wait for its heartbeat to expire."""
        self.r.delete(f"{self.p}:alive:{worker}")

    def progress(self) -> tuple[int, int, int]:
        """(queued, in flight with live workers, in flight with dead ones), read atomically."""
        queued, live, dead = self.r.eval(_PROGRESS, 2, f"{self.p}:requests", f"{self.p}:workers", self.p)
        return int(queued), int(live), int(dead)

    def recover(self) -> list[str]:
        """Put every dead, unfinished worker's in-flight requests back in the queue as they were
        (same score, so same priority); returns those workers."""
        lost = []
        finished = self.finished()
        for worker in self.workers():
            if worker in finished or self.alive(worker):
                continue
            inflight = f"{self.p}:inflight:{worker}"
            entries = self.r.zrange(inflight, 0, -1, withscores=True)
            pipe = self.r.pipeline(transaction=True)
            if entries:
                pipe.zadd(f"{self.p}:requests", dict(entries))
            pipe.delete(inflight)
            pipe.hset(f"{self.p}:finished", worker, "lost")
            pipe.execute()
            lost.append(worker)
        return lost

    def delete(self) -> int:
        keys = list(self.r.scan_iter(match=f"{self.p}:*", count=1000))
        if keys:
            self.r.delete(*keys)
        return len(keys)


class LedgerStats(MemoryStatsCollector):
    """Scrapy's stats, with each tracked counter also kept under the request it belongs to."""

    def __init__(self, crawler):
        super().__init__(crawler)
        self.by_request: dict[str | None, dict[str, int]] = {}

    def inc_value(self, key, count=1, start=0, *args, **kwargs):
        super().inc_value(key, count, start, *args, **kwargs)
        if key.startswith(TRACKED):
            counts = self.by_request.setdefault(_current_request.get(), {})
            counts[key] = counts.get(key, 0) + count

    def take(self, key: str | None) -> dict[str, int]:
        return self.by_request.pop(key, {})


def attribute(request) -> None:
    """Count what follows, in this task, under `request` (one handed out by RedisScheduler)."""
    _current_request.set(request.meta.get(REQUEST_KEY))


class AttributeDownloadMiddleware:
    """First downloader middleware: robots.txt denials and charset repairs count for the request."""

    def process_request(self, request, spider=None):
        attribute(request)


class AttributeSpiderMiddleware:
    """First spider middleware: what parsing a response counts (drops, broken pages) is its request's."""

    def process_spider_input(self, response, spider=None):
        attribute(response.request)


class RedisScheduler(Scheduler):
    """scrapy-redis's Scheduler with an in-flight set per worker, atomic enqueue and pop, and the
    idle rule of the module docstring. Settings: DISTILLERY_REDIS_PREFIX, DISTILLERY_WORKER_ID,
    DISTILLERY_LEDGER_FILE, DISTILLERY_SEED (False: a joining worker drops its start requests)."""

    @classmethod
    def from_crawler(cls, crawler):
        instance = super().from_crawler(crawler)
        instance.crawler = crawler
        settings = crawler.settings
        instance.prefix = settings["DISTILLERY_REDIS_PREFIX"]
        instance.worker = settings["DISTILLERY_WORKER_ID"]
        instance.ledger_path = settings["DISTILLERY_LEDGER_FILE"]
        instance.seed = settings.getbool("DISTILLERY_SEED")
        return instance

    def open(self, spider):
        super().open(spider)
        self.inflight = f"{self.prefix}:inflight:{self.worker}"
        self.handed_out: dict = {}
        self.enqueue_script = self.server.register_script(_ENQUEUE)
        self.pop_script = self.server.register_script(_POP)
        self.state = CrawlState(self.server, self.prefix)
        self.server.hset(f"{self.prefix}:workers", self.worker,
                         json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        self._beat()
        from twisted.internet import task

        self.heartbeat = task.LoopingCall(self._beat)
        self.heartbeat.start(HEARTBEAT_S, now=False)
        os.makedirs(os.path.dirname(self.ledger_path), exist_ok=True)
        self.ledger = open(self.ledger_path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole crawl)
        # Scrapy has no public hook for "the engine is done with this request" (parsed, follow-ups
        # scheduled, items through the pipelines); its slot's remove_request is exactly that moment.
        self.slot = self.crawler.engine._slot
        remove_request = self.slot.remove_request

        def done_then_remove(request):
            self._done(request)
            remove_request(request)

        self.slot.remove_request = done_then_remove
        self.crawler.signals.connect(self._on_idle, signal=signals.spider_idle)

    def close(self, reason):
        if self.heartbeat.running:
            self.heartbeat.stop()
        self.ledger.close()
        self.server.delete(f"{self.prefix}:alive:{self.worker}")

    def _beat(self) -> None:
        self.server.set(f"{self.prefix}:alive:{self.worker}", b"1", ex=ALIVE_TTL_S)

    def enqueue_request(self, request):
        if not self.seed and request.meta.get("is_start_request"):
            return False  # a joining worker: the stage seeded the frontier
        data = self.queue._encode_request(request)
        added = self.enqueue_script(keys=[self.df.key, self.queue.key],
                                    args=[self.df.request_fingerprint(request), -request.priority, data,
                                          int(request.dont_filter)])
        if not added:
            self.df.log(request, self.spider)
            return False
        self.stats.inc_value("scheduler/enqueued/redis")
        return True

    def next_request(self):
        data = self.pop_script(keys=[self.queue.key, self.inflight])
        if data is None:
            # Another worker may enqueue follow-ups: look again soon. Not while requests of our own
            # are in flight: each one's end asks at once, which a pending later call would swallow.
            if not self.handed_out and self.has_pending_requests():
                self.slot.nextcall.schedule(POLL_S)
            return None
        request = self.queue._decode_request(data)
        request.meta[REQUEST_KEY] = request_key(data)
        self.handed_out[request] = data
        self.stats.inc_value("scheduler/dequeued/redis")
        return request

    def _done(self, request) -> None:
        data = self.handed_out.pop(request, None)
        if data is None:
            return
        key = request.meta[REQUEST_KEY]
        counts = self.stats.take(key)
        if counts:  # written before the request leaves the in-flight set: never lost, never twice
            self.ledger.write(json.dumps({"request": key, "url": request.url, "counts": counts}) + "\n")
            self.ledger.flush()
        self.server.zrem(self.inflight, data)

    def has_pending_requests(self):
        queued, live, _ = self.state.progress()
        return queued > 0 or live > 0

    def _on_idle(self):
        queued, live, dead = self.state.progress()
        if not queued and not live and dead:
            raise CloseSpider("worker_lost")
