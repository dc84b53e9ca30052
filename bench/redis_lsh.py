"""Capacity: the Redis memory a dedup LSH index of N documents takes (dedup.lsh_storage: redis).

    .venv/bin/python bench/redis_lsh.py                    # 10k, 20k, 40k documents, about a minute
    .venv/bin/python bench/redis_lsh.py --docs 5000 50000

Starts a private redis-server (Debian's package) on a free loopback port, then for each N inserts
N random signatures into the index exactly as the dedup stage does (params.yaml's dedup settings:
num_perm, threshold, bands and rows, false-negative weight; pipeline.dedup.minhash.lsh_index and its
insertion session), reads `INFO memory` (used_memory) before and after, and clears the keys.
Prints bytes per document and the fitted cost of a million; memory grows linearly in N (one key
per document in each band's hash table, plus the document's key list).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config.params import load_params  # noqa: E402
from pipeline.dedup import minhash  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 20_000, 40_000])
    args = parser.parse_args()
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        sys.exit("bench: redis-server is not installed (make setup-dev)")
    import redis

    cfg = load_params(ROOT / "params.yaml").dedup
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", tmp], stdout=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
            storage = {"type": "redis", "basename": b"bench-lsh", "redis": {"host": "127.0.0.1", "port": port, "db": 0}}
            weights = (1.0 - cfg.false_negative_weight, cfg.false_negative_weight)
            bands_rows = (cfg.bands, cfg.rows) if cfg.bands else None
            rng = np.random.default_rng(0)
            print(f"dedup settings: num_perm {cfg.num_perm}, threshold {cfg.threshold}; redis-server {client.info()['redis_version']}")
            print(f"{'docs':>9} {'used_memory MiB':>16} {'bytes/doc':>10} {'insert s':>9}")
            per_doc = []
            for n in args.docs:
                client.flushdb()
                before = client.info("memory")["used_memory"]
                lsh = minhash.lsh_index(cfg.threshold, cfg.num_perm, weights, bands_rows, storage)
                sigs = rng.integers(0, 2**32 - 1, size=(n, cfg.num_perm), dtype=np.uint64).astype(np.uint32)
                started = time.perf_counter()
                with lsh.insertion_session(buffer_size=50_000) as session:
                    for k in range(n):
                        session.insert(k, minhash.lean(sigs[k], cfg.seed), check_duplication=False)
                took = time.perf_counter() - started
                used = client.info("memory")["used_memory"] - before
                per_doc.append(used / n)
                print(f"{n:>9} {used / 2**20:>16.1f} {used / n:>10.0f} {took:>9.1f}   (bands {lsh.b}, rows {lsh.r})")
            print(f"about {np.mean(per_doc):.0f} bytes per document: {np.mean(per_doc) * 1e6 / 2**30:.2f} GiB of Redis "
                  "memory per million documents")
        finally:
            client.flushdb()
            client.close()
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
