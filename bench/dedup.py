"""Benchmark: the dedup stage's near-duplicate search vs datasketch used straightforwardly and
datasketch's own fast path.

    .venv/bin/python bench/dedup.py                 # 100k documents, about 6 minutes on 2 cores
    .venv/bin/python bench/dedup.py --docs 20000    # quicker

Builds a corpus of N documents of about 1 KB (half English words, half CJK characters) in
which a share of documents are edited copies of others, planted at Jaccard levels from 0.5
to 0.95. Each method then runs in its own process on the same corpus and machine:

- distillery: `pipeline.dedup.near_duplicate_clusters` with params.yaml's dedup settings as
  the stage runs them (vectorised signatures on all cores, datasketch LSH, verification);
- baseline: `datasketch.MinHash()` + `update()` per shingle, `MinHashLSH` insert and query
  with its default weights, no verification;
- datasketch-fast: datasketch's fastest documented path: `MinHash.bulk` (one initialised
  permutation state for every document, each document's shingles hashed in one `update_batch`)
  and `MinHashLSH.insertion_session()`, same LSH weights, no verification. One core, as
  datasketch computes (the baseline too); distillery uses `dedup.workers` (all cores).

Ground truth is exact Jaccard on the shingle sets: a pair is a near-duplicate when its
Jaccard reaches the threshold. The candidate truth pairs are the planted ones and every pair
any method reports (unrelated random documents share next to no shingles). Printed side by
side: docs/s, precision, recall (overall and per planted level), peak RSS (process and its
workers). Targets: throughput >= 10x the baseline and >= 3x datasketch's fast path (at equal or
better precision and recall); precision >= 0.98, recall >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.dedup import minhash  # noqa: E402

LEVELS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
CJK_POOL = [chr(0x4E00 + i) for i in range(3000)]


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(SYLLABLES, k=rng.randint(1, 3)))


def _edit(tokens: list[str], n: int, target: float, pool, rng: random.Random) -> list[str]:
    """Substitute tokens at random positions so the n-gram Jaccard lands near `target`:
    an isolated substitution changes n shingles on each side, J ~ (S - n k) / (S + n k)."""
    shingles = len(tokens) - n + 1
    k = max(1, round(shingles * (1 - target) / (n * (1 + target))))
    out = list(tokens)
    for pos in rng.sample(range(len(tokens)), k):
        out[pos] = pool(rng) if callable(pool) else rng.choice(pool)
    return out


def build_corpus(n_docs: int, share: float, shingling: minhash.Shingling, seed: int) -> tuple[list[str], list[tuple[int, int, float]]]:
    rng = random.Random(seed)
    vocab = sorted({_word(rng) for _ in range(20_000)})
    docs: list[str] = []
    planted: list[tuple[int, int, float]] = []
    n_sources = int(n_docs * share)
    for i in range(n_docs):
        english = i % 2 == 0
        if i >= n_docs - n_sources:  # an edited copy of an earlier, unedited document of its language
            j = i - (n_docs - n_sources)
            source = j * 2 + (0 if english else 1)
            level = LEVELS[j % len(LEVELS)]
            if english:
                text = " ".join(_edit(docs[source].split(), shingling.word_ngram, level, vocab, rng))
            else:
                text = "".join(_edit(list(docs[source]), shingling.char_ngram, level, CJK_POOL, rng))
            planted.append((source, i, level))
            docs.append(text)
        elif english:
            words, size = [], 0
            while size < 1000:
                words.append(rng.choice(vocab))
                size += len(words[-1]) + 1
            docs.append(" ".join(words))
        else:
            docs.append("".join(rng.choices(CJK_POOL, k=334)))  # 3 bytes each in UTF-8
    return docs, planted


def _peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def run_distillery(texts: list[str], cfg) -> set[tuple[int, int]]:
    from pipeline.dedup.minhash import near_duplicate_clusters

    found = near_duplicate_clusters(texts, cfg)
    return {(a, b) for g in found.groups for x, a in enumerate(g) for b in g[x + 1:]}


def _shingle_strings(text: str, shingling: minhash.Shingling) -> list[str]:
    """The same shingles as pipeline.dedup.minhash, as strings (what a straightforward script hashes)."""
    mode = minhash.shingle_mode(text, shingling)
    folded = text.casefold()
    if mode == "char":
        pad = shingling.char_ngram - 1
        chars = "\0" * pad + "".join(minhash._WORD.findall(folded)) + "\1" * pad
        n = shingling.char_ngram
        return [chars[i:i + n] for i in range(len(chars) - n + 1)]
    words = minhash._WORD.findall(folded)
    n = min(shingling.word_ngram, len(words))
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def _query_pairs(lsh, sketches) -> set[tuple[int, int]]:
    """Every pair the LSH index reports, each document queried once."""
    pairs = set()
    for i, m in enumerate(sketches):
        for j in lsh.query(m):
            if j != i:
                pairs.add((min(i, j), max(i, j)))
    return pairs


def run_baseline(texts: list[str], cfg) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    shingling = minhash.Shingling(cfg.shingle, cfg.char_ngram, cfg.word_ngram)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    sketches = []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=cfg.num_perm)
        for s in _shingle_strings(text, shingling):
            m.update(s.encode("utf-8"))
        lsh.insert(i, m)
        sketches.append(m)
    return _query_pairs(lsh, sketches)


def run_datasketch_fast(texts: list[str], cfg) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    shingling = minhash.Shingling(cfg.shingle, cfg.char_ngram, cfg.word_ngram)
    sketches = MinHash.bulk(([s.encode("utf-8") for s in _shingle_strings(t, shingling)] for t in texts),
                            num_perm=cfg.num_perm)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    with lsh.insertion_session() as session:
        for i, m in enumerate(sketches):
            session.insert(i, m, check_duplication=False)
    return _query_pairs(lsh, sketches)


METHODS = {"distillery": run_distillery, "baseline": run_baseline, "datasketch-fast": run_datasketch_fast}


def _child(method: str, corpus: Path, out: Path) -> None:
    from pipeline.config.params import load_params

    cfg = load_params(ROOT / "params.yaml").dedup
    texts = json.loads(corpus.read_text(encoding="utf-8"))
    started = time.perf_counter()
    pairs = METHODS[method](texts, cfg)
    seconds = time.perf_counter() - started
    out.write_text(json.dumps({"seconds": seconds, "pairs": sorted(pairs), "peak_rss_mib": _peak_rss_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--planted-share", type=float, default=0.1, help="share of documents that are edited copies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return

    from pipeline.config.params import load_params

    cfg = load_params(ROOT / "params.yaml").dedup
    shingling = minhash.Shingling(cfg.shingle, cfg.char_ngram, cfg.word_ngram)
    docs, planted = build_corpus(args.docs, args.planted_share, shingling, args.seed)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.json"
        corpus.write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
        for method in METHODS:
            out = Path(tmp) / f"{method}.json"
            subprocess.run([sys.executable, __file__, "--child", method, str(corpus), str(out)], check=True)
            results[method] = json.loads(out.read_text())
            results[method]["pairs"] = {tuple(p) for p in results[method]["pairs"]}

    candidates = {(a, b) for a, b, _ in planted}.union(*(r["pairs"] for r in results.values()))
    sets: dict[int, object] = {}

    def shingles(i: int):
        if i not in sets:
            sets[i] = minhash.shingle_set(docs[i], shingling)
        return sets[i]

    exact = {p: minhash.jaccard(shingles(p[0]), shingles(p[1])) for p in candidates}
    truth = {p for p, j in exact.items() if j >= cfg.threshold}
    level_of = {(a, b): level for a, b, level in planted}

    mean_bytes = sum(len(d.encode("utf-8")) for d in docs) / len(docs)
    print(f"corpus: {len(docs)} documents (half English, half CJK), mean {mean_bytes:.0f} bytes; "
          f"{len(planted)} planted copies at Jaccard levels {', '.join(map(str, LEVELS))}")
    print(f"dedup settings (params.yaml): threshold {cfg.threshold}, num_perm {cfg.num_perm}, "
          f"word {cfg.word_ngram}-grams / CJK char {cfg.char_ngram}-grams, workers {cfg.workers or 'all cores'}")
    print(f"true near-duplicate pairs (exact Jaccard >= {cfg.threshold}): {len(truth)}\n")
    print(f"{'method':<16}{'docs/s':>10}{'seconds':>10}{'pairs':>9}{'precision':>11}{'recall':>8}{'peak RSS MiB':>14}")
    for method, res in results.items():
        pairs = res["pairs"]
        precision = len(pairs & truth) / len(pairs) if pairs else 1.0
        recall = len(pairs & truth) / len(truth) if truth else 1.0
        res.update(precision=precision, recall=recall)
        print(f"{method:<16}{len(docs) / res['seconds']:>10.0f}{res['seconds']:>10.1f}{len(pairs):>9}"
              f"{precision:>11.4f}{recall:>8.4f}{res['peak_rss_mib']:>14.0f}")
    print("\nrecall per planted level (pairs at or above the threshold only):")
    for level in LEVELS:
        at = {p for p in truth if level_of.get(p) == level}
        if at:
            cells = "  ".join(f"{m} {len(r['pairs'] & at) / len(at):.3f}" for m, r in results.items())
            print(f"  {level:<5} {len(at):>6} pairs   {cells}")
    ours, base, fast = results["distillery"], results["baseline"], results["datasketch-fast"]
    print(f"\nthroughput ratio distillery/baseline: {base['seconds'] / ours['seconds']:.1f}x (target >= 10x); "
          f"distillery/datasketch-fast: {fast['seconds'] / ours['seconds']:.1f}x (target >= 3x, at equal or better "
          f"precision and recall: {fast['precision']:.4f} and {fast['recall']:.4f} there); "
          f"distillery precision {ours['precision']:.4f} (>= 0.98), recall {ours['recall']:.4f} (>= 0.95)")


if __name__ == "__main__":
    main()
