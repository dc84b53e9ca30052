"""Near-duplicate detection: shingles, MinHash signatures, LSH candidates, exact-Jaccard checks, clusters.

Signatures are datasketch's `affine32` MinHash bit for bit (its permutations from numpy.random.RandomState(seed),
its MurmurHash3 pre-mix), so they go straight into a datasketch MinHashLSH index, in memory or in Redis. They are
computed without a call per shingle: shingles hashed with numpy over whole documents (one xxhash call per word, none
per character), the permutations applied to a block of documents at once (one `minimum.reduceat` per block), in
worker processes. `near_duplicate_clusters` is the search as the dedup stage runs it. Docs: docs/stages/dedup.md.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import xxhash

from pipeline.config.dedup import DedupConfig
from pipeline.data.text import is_cjk

_WORD = re.compile(r"\w+")

_M64 = np.uint64(0xFF51AFD7ED558CCD)
_M64B = np.uint64(0xC4CEB9FE1A85EC53)
_PRIME64 = np.uint64(0x9E3779B97F4A7C15)
_U32_MAX = np.uint32(0xFFFFFFFF)
# Signatures are computed this many shingles at a time: a (block x num_perm) uint32 matrix of
# 4 Ki x 128 is 2 MiB and stays in cache; 64 Ki blocks measured 2.5x slower.
_BLOCK_SHINGLES = 1 << 12
# Below this many documents per worker, starting processes costs more than it saves.
_MIN_DOCS_PER_WORKER = 2000


@dataclass(frozen=True)
class Shingling:
    """How a text becomes a set of shingles."""

    mode: str = "auto"
    """`char` (character n-grams), `word` (word n-grams) or `auto`: char for CJK text, else word."""
    char_ngram: int = 5
    word_ngram: int = 3


def shingle_mode(text: str, shingling: Shingling) -> str:
    if shingling.mode != "auto":
        return shingling.mode
    return "char" if is_cjk(text) else "word"


def normal_form(text: str) -> str:
    """Case-folded word characters only: what exact duplicates are compared on."""
    return " ".join(_WORD.findall(text.casefold()))


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * _M64
    h = h ^ (h >> np.uint64(33))
    h = h * _M64B
    return h ^ (h >> np.uint64(33))


def _tokens(text: str, mode: str, shingling: Shingling) -> np.ndarray:
    """64-bit token ids: xxh64 of each case-folded word, or each character's code point."""
    folded = text.casefold()
    if mode == "word":
        words = _WORD.findall(folded)
        return np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    chars = "".join(_WORD.findall(folded))
    if not chars:
        return np.empty(0, dtype=np.uint64)
    # Boundary markers (code points 0 and 1, never word characters): a CJK entity is one or
    # two characters and often opens a question (铝属于… / 镓属于…). Without markers a changed
    # first character touches one shingle, and distinct templated questions of the sample
    # bank score up to 0.93 at 5-grams; with them every character sits in n shingles (max 0.76).
    # Word shingles go without: a mark a copying site puts in front ("Q: …") then costs one
    # shingle, and distinct English templates differ mid-text, where markers change nothing.
    pad = "\0" * (shingling.char_ngram - 1)
    marked = pad + chars + pad.replace("\0", "\1")
    return np.frombuffer(marked.encode("utf-32-le"), dtype="<u4").astype(np.uint64)


def _ngram_hashes(tokens: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the n-grams of several token sequences laid end to end, and the index of the
    sequence each belongs to; n-grams that would cross from one sequence into the next are
    left out. A sequence shorter than n must not be given."""
    width = tokens.size - n + 1
    with np.errstate(over="ignore"):
        h = _fmix64(tokens[:width] ^ _PRIME64)
        for j in range(1, n):
            h = _fmix64(h * _PRIME64 + tokens[j:j + width])
    owner = np.repeat(np.arange(lengths.size), lengths)
    inside = owner[:width] == owner[n - 1:]
    return (h[inside] >> np.uint64(32)).astype(np.uint32), owner[:width][inside]


def shingle_sets(texts: Sequence[str], shingling: Shingling) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shingle sets of many texts at once, vectorised across texts: (values, counts,
    char_mode), the sorted unique 32-bit n-gram hashes of text 0, then of text 1, ...; counts[i]
    values each; char_mode[i] when text i was shingled by characters. A text of fewer than n
    words is one shingle; a text without word characters has none."""
    groups: dict[int, tuple[list[int], list[np.ndarray]]] = {}
    char_mode = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        mode = shingle_mode(text, shingling)
        char_mode[i] = mode == "char"
        tokens = _tokens(text, mode, shingling)
        if tokens.size:
            n = min(shingling.char_ngram if mode == "char" else shingling.word_ngram, tokens.size)
            groups.setdefault(n, ([], []))
            groups[n][0].append(i)
            groups[n][1].append(tokens)
    values, owners = [np.empty(0, np.uint32)], [np.empty(0, np.int64)]
    for n, (index, token_lists) in groups.items():
        h, owner = _ngram_hashes(np.concatenate(token_lists), np.array([t.size for t in token_lists]), n)
        values.append(h)
        owners.append(np.asarray(index, dtype=np.int64)[owner])
    # one sort for all texts: text index in the high bits, shingle hash in the low ones
    keys = np.sort((np.concatenate(owners).astype(np.uint64) << np.uint64(32)) | np.concatenate(values))
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]  # np.unique hashes first: 10x slower here
    counts = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=len(texts))
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32), counts, char_mode


def shingle_set(text: str, shingling: Shingling) -> np.ndarray:
    """Sorted unique 32-bit hashes of one text's n-grams (see shingle_sets)."""
    return shingle_sets([text], shingling)[0]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique shingle arrays."""
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters for (num_perm, seed): a odd, b any."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures_of_sets(sets: Sequence[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (len(sets) x num_perm, uint32) of shingle sets, identical to
    datasketch `MinHash(num_perm, seed, scheme="affine32", hashfunc=int)` updated with every
    shingle. An empty set keeps datasketch's empty value (all 0xFFFFFFFF)."""
    values = np.concatenate([np.empty(0, np.uint32), *sets])
    return _signatures(values, np.array([s.size for s in sets], dtype=np.int64), num_perm, seed)


def _signatures(values: np.ndarray, counts: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """Signatures of the sets laid end to end in `values` (counts[i] shingles for set i)."""
    a, b = permutations(num_perm, seed)
    out = np.full((counts.size, num_perm), _U32_MAX, dtype=np.uint32)
    ends = np.cumsum(counts)
    start = 0
    while start < counts.size:
        # the sets from `start` whose shingles fit one block (always at least one set)
        first = ends[start] - counts[start]
        stop = max(start + 1, int(np.searchsorted(ends, first + _BLOCK_SHINGLES, side="right")))
        filled = start + np.flatnonzero(counts[start:stop])
        if filled.size:
            hv = _fmix32(values[first:ends[stop - 1]])
            with np.errstate(over="ignore"):
                phv = hv[:, None] * a[None, :]
                phv += b[None, :]
            offsets = ends[filled] - counts[filled] - first
            out[filled] = np.minimum.reduceat(phv, offsets, axis=0)
        start = stop
    return out


@dataclass
class Sketches:
    signatures: np.ndarray
    """len(texts) x num_perm, uint32."""
    exact_keys: list[bytes]
    """128-bit hash of each text's normal form: equal keys, exact duplicates."""
    char_mode: np.ndarray
    """True where a text was shingled by characters."""


def _sketch_chunk(args: tuple[list[str], Shingling, int, int]) -> Sketches:
    texts, shingling, num_perm, seed = args
    values, counts, char_mode = shingle_sets(texts, shingling)
    return Sketches(signatures=_signatures(values, counts, num_perm, seed),
                    exact_keys=[xxhash.xxh3_128_digest(normal_form(t).encode("utf-8")) for t in texts],
                    char_mode=char_mode)


def sketches(texts: Sequence[str], shingling: Shingling, num_perm: int, seed: int,
             workers: int = 0) -> Sketches:
    """Signatures, exact-duplicate keys and shingle modes of the texts, computed in `workers`
    processes (0: all cores). The result does not depend on the number of workers."""
    workers = workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(texts) // _MIN_DOCS_PER_WORKER))
    if workers == 1:
        return _sketch_chunk((list(texts), shingling, num_perm, seed))
    chunk = -(-len(texts) // (workers * 4))
    jobs = [(list(texts[i:i + chunk]), shingling, num_perm, seed) for i in range(0, len(texts), chunk)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(_sketch_chunk, jobs))
    return Sketches(signatures=np.concatenate([p.signatures for p in parts]),
                    exact_keys=[key for p in parts for key in p.exact_keys],
                    char_mode=np.concatenate([p.char_mode for p in parts]))


def lsh_index(threshold: float, num_perm: int, weights: tuple[float, float],
              bands_rows: tuple[int, int] | None, storage_config: dict | None = None):
    """A datasketch MinHashLSH; bands and rows minimise datasketch's weighted false
    positive / false negative areas unless given."""
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights, params=bands_rows,
                      storage_config=storage_config)


def lean(signature: np.ndarray, seed: int):
    from datasketch import LeanMinHash

    return LeanMinHash(seed=seed, hashvalues=signature, scheme="affine32")


def candidate_pairs(lsh, sigs: np.ndarray, keys: Iterable[int], seed: int,
                    buffer_size: int = 50_000) -> set[tuple[int, int]]:
    """Pairs (i < j) of keys that share an LSH bucket. Everything is inserted in one
    insertion session (a few round trips per buffer on Redis), then every key is queried."""
    sketches = {int(k): lean(sigs[k], seed) for k in keys}
    with lsh.insertion_session(buffer_size=buffer_size) as session:
        for k, sketch in sketches.items():
            session.insert(k, sketch, check_duplication=False)
    pairs: set[tuple[int, int]] = set()
    for k, sketch in sketches.items():
        for other in lsh.query(sketch):
            if other != k:
                pairs.add((k, other) if k < other else (other, k))
    return pairs


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving; the smaller index is always the root,
    so the result does not depend on the order pairs arrive in."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> Iterator[list[int]]:
        """Each set with two or more members, members ascending, sets by smallest member."""
        members: dict[int, list[int]] = {}
        for x in range(len(self.parent)):
            members.setdefault(self.find(x), []).append(x)
        return (m for m in members.values() if len(m) > 1)


# --- the near-duplicate search, as the dedup stage runs it -------------------------------

@dataclass
class Clusters:
    """What the near-duplicate search found over a list of texts."""

    groups: list[list[int]]
    """Sets of two or more indices that are (transitively) duplicates, members ascending."""
    exact_pairs: int
    candidate_pairs: int
    verified_pairs: int
    bands: int
    rows: int
    shingle_modes: dict[str, int] = field(default_factory=dict)


def shingling(cfg: DedupConfig) -> Shingling:
    return Shingling(mode=cfg.shingle, char_ngram=cfg.char_ngram, word_ngram=cfg.word_ngram)


def storage_config(cfg: DedupConfig) -> dict | None:
    if cfg.lsh_storage == "memory":
        return None
    return {
        "type": "redis",
        "basename": cfg.redis.basename.encode(),
        "redis": {"host": cfg.redis.host, "port": cfg.redis.port, "db": cfg.redis.db,
                  # datasketch reads it from the environment: it never reaches params or logs
                  "password": {"env": "REDIS_PASSWORD", "default": None}},
    }


def clear_redis_index(cfg: DedupConfig) -> int:
    """Delete the keys under the index's basename (left by a run that crashed, or by this one)."""
    import redis

    client = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=cfg.redis.db,
                         password=os.environ.get("REDIS_PASSWORD"))
    try:
        keys = list(client.scan_iter(match=cfg.redis.basename.encode() + b"*", count=10_000))
        for i in range(0, len(keys), 10_000):
            client.delete(*keys[i:i + 10_000])
    except redis.exceptions.ConnectionError as exc:
        sys.exit(f"error: dedup.lsh_storage is redis but {cfg.redis.host}:{cfg.redis.port} does not "
                 f"answer ({exc}); start redis-server or set dedup.lsh_storage: memory")
    finally:
        client.close()
    return len(keys)


def near_duplicate_clusters(texts: list[str], cfg: DedupConfig) -> Clusters:
    """Exact groups first; then MinHash LSH over one text per exact group, verified pairs joined."""
    sh = shingling(cfg)
    sketched = sketches(texts, sh, cfg.num_perm, cfg.seed, cfg.workers)
    uf = UnionFind(len(texts))
    first_of: dict[bytes, int] = {}
    exact_pairs = 0
    for i, key in enumerate(sketched.exact_keys):
        if key in first_of:
            uf.union(first_of[key], i)
            exact_pairs += 1
        else:
            first_of[key] = i
    unique = sorted(first_of.values())
    unique_texts = [texts[i] for i in unique]
    sigs = sketched.signatures[unique]
    bands_rows = (cfg.bands, cfg.rows) if cfg.bands else None
    weights = (1.0 - cfg.false_negative_weight, cfg.false_negative_weight)
    if cfg.lsh_storage == "redis":
        clear_redis_index(cfg)
    lsh = lsh_index(cfg.threshold, cfg.num_perm, weights, bands_rows, storage_config(cfg))
    empty = np.all(sigs == np.uint32(0xFFFFFFFF), axis=1)  # no word characters: exact match only
    try:
        pairs = candidate_pairs(lsh, sigs, np.flatnonzero(~empty), cfg.seed)
    finally:
        if cfg.lsh_storage == "redis":
            clear_redis_index(cfg)
    verified = 0
    cache: dict[int, np.ndarray] = {}

    def shingles(k: int) -> np.ndarray:
        if k not in cache:
            cache[k] = shingle_set(unique_texts[k], sh)
        return cache[k]

    for a, b in sorted(pairs):
        if not cfg.verify or jaccard(shingles(a), shingles(b)) >= cfg.threshold:
            verified += 1
            uf.union(unique[a], unique[b])
    n_char = int(sketched.char_mode.sum())
    return Clusters(groups=list(uf.groups()), exact_pairs=exact_pairs, candidate_pairs=len(pairs),
                    verified_pairs=verified, bands=lsh.b, rows=lsh.r,
                    shingle_modes={"char": n_char, "word": len(texts) - n_char})
