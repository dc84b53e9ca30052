"""Models and adapters: loading the base (full precision, or 4-bit for QLoRA), the tuned model
(adapter applied to the full-precision base), the tokens base_model added, the LoRA rank vLLM
needs, and the merge of an adapter into its base as a checkpoint other tools read without
guessing (what the merge stage writes, and what evaluate serves when vLLM cannot apply an
adapter as a LoRA module).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data import chat_format
from pipeline.paths import ADAPTER_DIR, BASE_DIR, MERGED_DIR
from pipeline.runtime.device import torch_dtype

if TYPE_CHECKING:  # annotations only: the section is read by the stage that passes it
    from pipeline.config.train import TrainConfig

# The tokens base_model added to a pretrained vocabulary (chat and tag tokens), recorded in
# models/base: their embedding rows are untrained, so train makes them trainable
# (train.lora.train_new_tokens).
NEW_TOKENS = "distillery_new_tokens.json"
# vLLM accepts these LoRA ranks (max_lora_rank); the engine's must be >= the adapter's.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def load_base(cfg: TrainConfig, base_dir: Path = BASE_DIR, device: str = "cpu"):
    """The base model to train on (`device`: pipeline.runtime.device's choice): full precision, or 4-bit
    for QLoRA (bitsandbytes)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch_dtype(cfg.dtype, device)
    if not cfg.qlora.enabled:
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    from peft import prepare_model_for_kbit_training

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.qlora.quant_type,
        bnb_4bit_use_double_quant=cfg.qlora.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, cfg.qlora.compute_dtype),
    )
    device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if device == "cuda" else None
    if device_map is None:
        skip = cpu_unquantizable(base_dir)
        if skip:
            quant.llm_int8_skip_modules = [*skip, "lm_head"]
            print(f"train: QLoRA on CPU keeps {', '.join(skip)} in full precision: their input width is not a "
                  f"multiple of bitsandbytes' 4-bit block ({BNB_BLOCK}), which its CPU kernels need", flush=True)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, quantization_config=quant, device_map=device_map)
    # Non-re-entrant checkpointing: PEFT's default (re-entrant) marks the LoRA parameters ready
    # twice under DDP ("Expected to mark a variable ready only once"), which `make train GPUS=2`
    # with QLoRA would hit at its first step.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                            gradient_checkpointing_kwargs=GRADIENT_CHECKPOINTING_KWARGS)
    if device_map is None:
        # On CPU the parameters left unquantized (embeddings, norms, head) are views into the
        # checkpoint's memory map, which keeps the pages of the whole full-precision file resident
        # after quantization read them. Owning copies let the map go.
        with torch.no_grad():
            for param in model.parameters():
                if param.dtype != torch.uint8:
                    param.data = param.data.clone()
    return model


BNB_BLOCK = 64  # bitsandbytes' 4-bit quantization block
# Gradient checkpointing without re-entrant autograd, wherever it is turned on (the Trainer, PEFT).
GRADIENT_CHECKPOINTING_KWARGS = {"use_reentrant": False}


def cpu_unquantizable(base_dir: Path) -> list[str]:
    """Names (last component) of the linear layers bitsandbytes cannot run in 4 bits on CPU:
    its CPU kernel reshapes the block scales as [out, in // 64] and fails when 64 does not
    divide `in` (the tiny model's MLP down projection). Real models' widths are multiples."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
    return sorted({name.rsplit(".", 1)[-1] for name, mod in skeleton.named_modules()
                   if isinstance(mod, torch.nn.Linear) and mod.in_features % BNB_BLOCK and name != "lm_head"})


def load_for_scoring(device: str, dtype: str, adapter_dir: Path | None = None, base_dir: Path = BASE_DIR):
    """The base model (no `adapter_dir`) or the tuned one, in eval mode, for forward passes only
    (held-out loss, log-likelihood multiple choice). On the CPU in float32, whatever `dtype`
    says: the figures of every CPU run. On CUDA in `dtype` (a config's name; the gpu profiles say
    bfloat16): the base loaded straight onto the GPU, the tuned model merged in float32 first and
    cast after, so the merge's arithmetic is the same as the merge stage's."""
    import torch
    from transformers import AutoModelForCausalLM

    if device == "cpu":
        model = (AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32) if adapter_dir is None
                 else load_tuned(adapter_dir, base_dir))
        return model.eval()
    wanted = torch_dtype(dtype, device)
    if adapter_dir is None:
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=wanted, device_map={"": device}).eval()
    return load_tuned(adapter_dir, base_dir).to(device=device, dtype=wanted).eval()


def adapter_trains_tokens(adapter_dir: Path = ADAPTER_DIR) -> bool:
    """Does the adapter carry trained token embeddings (train.lora.train_new_tokens)? vLLM cannot
    apply those as a LoRA module: evaluate and serve use the adapter merged into the base."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return bool(config.get("trainable_token_indices"))


def load_tuned(adapter_dir: Path = ADAPTER_DIR, base_dir: Path = BASE_DIR, merge: bool = True):
    """The tuned model: the adapter applied to the full-precision base (also after QLoRA, whose
    adapter was trained on a 4-bit copy), merged into its weights unless `merge` is False."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    if getattr(AutoConfig.from_pretrained(base_dir), "quantization_config", None):
        raise ValueError(f"{base_dir} is a quantized checkpoint; the adapter is applied to a full-precision base only")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir)
    return model.merge_and_unload() if merge else model


def new_token_ids(base_dir: Path = BASE_DIR) -> list[int]:
    """Ids of the tokens base_model added to a pretrained vocabulary (none for the tiny model,
    whose tokenizer is trained with them)."""
    path = Path(base_dir) / NEW_TOKENS
    return json.loads(path.read_text())["ids"] if path.exists() else []


def vllm_lora_rank(rank: int) -> int:
    """The smallest LoRA rank vLLM accepts that holds an adapter of rank `rank`."""
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        raise ValueError(f"LoRA rank {rank} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})")
    return fitting[0]


# --- merge: the adapter folded into the base, as a self-describing checkpoint ----------------

def added_tokens_decoder(tokenizer) -> dict:
    """tokenizer_config.json's added_tokens_decoder, from the tokenizer's own added tokens."""
    return {
        str(idx): {"content": tok.content, "lstrip": tok.lstrip, "normalized": tok.normalized,
                   "rstrip": tok.rstrip, "single_word": tok.single_word, "special": tok.special}
        for idx, tok in sorted(tokenizer.added_tokens_decoder.items())
    }


def save_merged_tokenizer(tokenizer, base_dir: Path, out_dir: Path) -> None:
    tokenizer.chat_template = chat_format.template_for(tokenizer, inference=True)
    chat_format.save_tokenizer(tokenizer, out_dir)
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
    config["eos_token"] = chat_format.IM_END
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """generation_config's eos ids with the end-of-turn token first (other eos ids kept)."""
    eot = tokenizer.convert_tokens_to_ids(chat_format.IM_END)
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
    return [eot, *[e for e in eos if e != eot]]


def check_merged(out_dir: Path) -> None:
    """Read the saved checkpoint back: eos must be the end-of-turn token everywhere."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    eot = tokenizer.convert_tokens_to_ids(chat_format.IM_END)
    gen = GenerationConfig.from_pretrained(out_dir)
    gen_eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    config_eos = AutoConfig.from_pretrained(out_dir).eos_token_id
    problems = []
    if tokenizer.eos_token != chat_format.IM_END:
        problems.append(f"tokenizer eos_token is {tokenizer.eos_token!r}")
    if gen_eos[0] != eot:
        problems.append(f"generation_config.json eos_token_id is {gen.eos_token_id}")
    if config_eos != eot and not (isinstance(config_eos, list) and config_eos[0] == eot):
        problems.append(f"config.json eos_token_id is {config_eos}")
    if tokenizer.chat_template != chat_format.template_for(tokenizer, inference=True):
        problems.append("the chat template is not pipeline.data.chat_format's")
    if problems:
        raise SystemExit(f"error: {out_dir}: the end of turn is {chat_format.IM_END!r} (id {eot}), but "
                         + "; ".join(problems))


def merge(base_dir: Path = BASE_DIR, adapter_dir: Path = ADAPTER_DIR, out_dir: Path = MERGED_DIR) -> dict:
    import torch
    from transformers import AutoConfig, AutoTokenizer

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
    save_merged_tokenizer(tokenizer, base_dir, out_dir)
    check_merged(out_dir)
    return {"parameters": sum(p.numel() for p in model.parameters()), "dtype": str(model.dtype),
            "eos_token_id": eos}
