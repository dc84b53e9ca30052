"""Stage merge: the LoRA adapter merged into the full-precision base, saved as a HF checkpoint
that llama.cpp's converter reads without guessing.

What it writes to models/merged, beyond save_pretrained's files:
- tokenizer.model, the SentencePiece model, when the base has one (transformers 5 saves only
  tokenizer.json; without tokenizer.model the converter treats a SentencePiece vocabulary as an
  unknown BPE one);
- added_tokens_decoder in tokenizer_config.json, so the converter types the turn and tag tokens
  as control / user-defined tokens and llama.cpp keeps each one a single token;
- the chat template without training-only markers (chat.INFERENCE_CHAT_TEMPLATE);
- eos = the end-of-turn token in config.json, generation_config.json and the tokenizer,
  checked after saving: a merge that loses it fails here, not in a user's Ollama.

    python -m pipeline.export.merge        # dvc repro merge
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline import chat
from pipeline.config import load_or_exit
from pipeline.export import ADAPTER_DIR, BASE_DIR, MERGED_DIR


def added_tokens_decoder(tokenizer) -> dict:
    """tokenizer_config.json's added_tokens_decoder, from the tokenizer's own added tokens."""
    return {
        str(idx): {"content": tok.content, "lstrip": tok.lstrip, "normalized": tok.normalized,
                   "rstrip": tok.rstrip, "single_word": tok.single_word, "special": tok.special}
        for idx, tok in sorted(tokenizer.added_tokens_decoder.items())
    }


def save_tokenizer(tokenizer, base_dir: Path, out_dir: Path) -> None:
    tokenizer.chat_template = chat.template_for(tokenizer, inference=True)
    chat.save_tokenizer(tokenizer, out_dir)
    if (base_dir / "tokenizer.model").exists():
        shutil.copyfile(base_dir / "tokenizer.model", out_dir / "tokenizer.model")
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = added_tokens_decoder(tokenizer)
    # What the tokenizer does, spelled out for the converter (which otherwise assumes
    # SentencePiece's defaults: a BOS and a "▁" before every text).
    probe = tokenizer("a")["input_ids"]
    config["add_bos_token"] = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    config["add_eos_token"] = tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
    config["add_prefix_space"] = bool(getattr(tokenizer, "add_prefix_space", False))
    config["eos_token"] = chat.IM_END
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """generation_config's eos ids with the end-of-turn token first (other eos ids kept)."""
    eot = tokenizer.convert_tokens_to_ids(chat.IM_END)
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
    return [eot, *[e for e in eos if e != eot]]


def check_merged(out_dir: Path) -> None:
    """Read the saved checkpoint back: eos must be the end-of-turn token everywhere."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    eot = tokenizer.convert_tokens_to_ids(chat.IM_END)
    gen = GenerationConfig.from_pretrained(out_dir)
    gen_eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    config_eos = AutoConfig.from_pretrained(out_dir).eos_token_id
    problems = []
    if tokenizer.eos_token != chat.IM_END:
        problems.append(f"tokenizer eos_token is {tokenizer.eos_token!r}")
    if gen_eos[0] != eot:
        problems.append(f"generation_config.json eos_token_id is {gen.eos_token_id}")
    if config_eos != eot and not (isinstance(config_eos, list) and config_eos[0] == eot):
        problems.append(f"config.json eos_token_id is {config_eos}")
    if tokenizer.chat_template != chat.template_for(tokenizer, inference=True):
        problems.append("the chat template is not pipeline.chat's")
    if problems:
        raise SystemExit(f"error: {out_dir}: the end of turn is {chat.IM_END!r} (id {eot}), but "
                         + "; ".join(problems))


def merge(base_dir: Path = BASE_DIR, adapter_dir: Path = ADAPTER_DIR, out_dir: Path = MERGED_DIR) -> dict:
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from pipeline.train import load_tuned

    model = load_tuned(adapter_dir, base_dir, merge=True)  # float32 base, never a 4-bit one
    dtype = getattr(AutoConfig.from_pretrained(base_dir), "dtype", None)
    if dtype in (torch.bfloat16, torch.float16, "bfloat16", "float16"):
        model = model.to(getattr(torch, str(dtype).removeprefix("torch.")))  # the base's own dtype
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)  # the tokenizer saved with the adapter
    eos = end_of_turn_ids(model, tokenizer)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = eos[0]
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    save_tokenizer(tokenizer, base_dir, out_dir)
    check_merged(out_dir)
    return {"parameters": sum(p.numel() for p in model.parameters()), "dtype": str(model.dtype),
            "eos_token_id": eos}


def main() -> None:
    load_or_exit()  # params.yaml must be valid before anything heavy loads
    info = merge()
    print(f"merge: {ADAPTER_DIR} merged into {BASE_DIR} -> {MERGED_DIR} "
          f"({info['parameters']:,} parameters, {info['dtype']}, eos {info['eos_token_id']})")


if __name__ == "__main__":
    main()
