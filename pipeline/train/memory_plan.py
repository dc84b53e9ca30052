"""The memory a training run needs on one GPU (per process), estimated from params.yaml without loading weights.

    python -m pipeline.train --plan

Weights, trainable parameters with their gradients and AdamW's moments, activations (after Korthikanti et al. 2022),
the loss's chunk and a fixed reserve, for full, fully labelled rows: an upper bound.
What each term counts: docs/gpus.md ("The memory estimate").
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline.config import Sections
from pipeline.config.train import TrainConfig
from pipeline.data import chat_format
from pipeline.paths import BASE_DIR

GIB = 2**30
GPU_GIB = (16, 24, 40, 48, 80)
RESERVE = 1 * GIB  # CUDA context, cuBLAS workspaces, allocator fragmentation: a margin, not derived
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BLOCK = 64  # weights per quantization scale (bitsandbytes)
DOUBLE_QUANT_BLOCK = 256  # scales per float32 constant of the second quantization
# The linear layers of a decoder layer, in groups that read the same input tensor.
LINEAR_GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))


@dataclasses.dataclass(frozen=True)
class Arch:
    """A decoder's shape (Llama / Qwen2 / Qwen3 / Gemma 3 layout)."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: dict) -> Arch:
        """From config.json's keys (model.arch uses the same names)."""
        heads = cfg["num_attention_heads"]
        return cls(cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], heads,
                   cfg.get("num_key_value_heads") or heads, cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   cfg.get("tie_word_embeddings", True))  # transformers' default where config.json omits it

    def body(self) -> tuple:
        """What added tokens do not change."""
        return self.layers, self.hidden, self.intermediate, self.heads, self.kv_heads, self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """name -> (in, out) of each linear layer of a decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linears().values())

    def params(self) -> int:
        """Linear layers, embedding (and an untied output layer), and the norms and q/k/v biases
        (at most: Qwen2's; other families have fewer)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        small = self.layers * (2 * self.hidden + q + 2 * kv) + self.hidden
        return self.linear_params() + self.vocab * self.hidden * (1 if self.tied else 2) + small


def _hub_config(hf_id: str) -> Path | None:
    """config.json of a local model directory, or of a hub id in the Hugging Face cache."""
    local = Path(hf_id) / "config.json"
    if local.is_file():
        return local
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hf_id, "config.json")
    except ValueError:  # not a hub id (a path that does not exist)
        return None
    return Path(found) if isinstance(found, str) else None


def architecture(params: Sections, base_dir: Path = BASE_DIR) -> tuple[Arch, str]:
    """The student's shape and where it was read."""
    model = params.model
    reference, source = None, None
    if model.source == "hf" and (found := _hub_config(model.hf_id)):
        reference, source = Arch.from_config(json.loads(found.read_text())), str(found)
    elif model.arch is not None:
        reference, source = Arch.from_config(dataclasses.asdict(model.arch)), "model.arch (params.yaml)"
    elif model.tiny is not None:
        t = model.tiny
        reference = Arch(t.num_layers, t.hidden_size, t.intermediate_size, t.vocab_size or 0, t.num_heads,
                         t.num_kv_heads, t.hidden_size // t.num_heads, True)
        source = "model.tiny (params.yaml)"
    built = base_dir / "config.json"
    if built.is_file():
        arch = Arch.from_config(json.loads(built.read_text()))
        if reference is None or arch.body() == reference.body():
            return arch, str(built)
    if reference is None or not reference.vocab:
        what = model.hf_id or f"the {model.source} model"
        raise SystemExit(f"error: --plan: the shape of {what} is unknown (no {built} of it, no config.json in the "
                         "Hugging Face cache, no model.arch; a pinned tokenizer's vocabulary is known once "
                         "base_model has run): run `dvc repro base_model`, or copy its config.json's sizes into "
                         "model.arch")
    return reference, source


def _new_tokens(params: Sections, base_dir: Path, from_base: bool) -> int:
    """Tokens whose rows train (train.lora.train_new_tokens): base_model's record where models/base
    is this model's, else at most those our template adds (plus a pad token)."""
    if not params.train.lora.train_new_tokens or params.model.source == "tiny":
        return 0
    record = base_dir / "distillery_new_tokens.json"
    if from_base and record.is_file():
        return len(json.loads(record.read_text())["ids"])
    return len(chat_format.CONTROL_TOKENS) + len(chat_format.TAG_TOKENS) + 1 if params.chat.template == "distillery" else 1


def _dtypes(cfg: TrainConfig, device: str) -> tuple[int, int, int, str]:
    """(bytes of a stored weight, of the compute dtype, of the residual stream, what they are)."""
    name = cfg.dtype if cfg.dtype != "auto" else ("float32" if device == "cpu" else "bfloat16")
    stored = BYTES[name]
    label = f"auto: {name} on a GPU" if cfg.dtype == "auto" and device != "cpu" else name
    if cfg.qlora.enabled:
        # prepare_model_for_kbit_training turns the 16-bit embedding and norms into float32, and
        # bitsandbytes casts each layer's output back to its input's dtype: a float32 residual
        compute = BYTES[cfg.qlora.compute_dtype] if stored < 4 else 4
        return 4, compute, 4, (f"train.dtype {label}, compute {cfg.qlora.compute_dtype}, unquantized weights and "
                               "residual stream float32")
    return stored, stored, stored, f"train.dtype {label}"


def _activations(arch: Arch, cfg: TrainConfig, a: int, res: int) -> int:
    """Bytes autograd keeps per token for one decoder layer (module docstring)."""
    h, i = arch.hidden, arch.intermediate
    q, kv = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    norms = 2 * 4 * h  # RMSNorm keeps its input upcast to float32
    attention = a * (2 * q + 2 * kv) + 4 * arch.heads  # q, k, v, output, float32 log-sum-exp per head
    mlp = 3 * res * i  # gate and up outputs, SiLU output
    rope = 2 * res * arch.head_dim  # cos, sin
    targets = set(arch.linears()) if cfg.lora.target_modules == "all-linear" else set(cfg.lora.target_modules)
    lora = 0
    for group in LINEAR_GROUPS:
        adapted = [name for name in group if name in targets]
        # Under mixed precision PEFT casts the input to the adapter's float32 and autocast back:
        # each adapted layer keeps its own copy. In float32 the layers of a group share one.
        copies = len(adapted) if a < 4 else min(1, len(adapted))
        lora += copies * a * arch.linears()[group[0]][0] + len(adapted) * a * cfg.lora.r
    return norms + attention + mlp + rope + lora


def plan(params: Sections, micro_batch: int, base_dir: Path = BASE_DIR) -> dict:
    """The estimate for a process training `micro_batch` rows at a time: each item's bytes and
    how it was counted, the total, and the figures behind them."""
    cfg = params.train
    arch, source = architecture(params, base_dir)
    tokens = micro_batch * cfg.max_seq_len
    stored, a, res, dtypes = _dtypes(cfg, params.device)
    total_params, linear = arch.params(), arch.linear_params()
    if cfg.qlora.enabled:
        per_weight = 0.5 + (1 + 4 / DOUBLE_QUANT_BLOCK if cfg.qlora.double_quant else 4) / NF4_BLOCK
        weights = linear * per_weight + (total_params - linear) * 4
        weights_how = (f"{linear / 1e9:.2f} B linear-layer weights in {cfg.qlora.quant_type} ({per_weight:.4f} bytes "
                       f"each with their scales) + {(total_params - linear) / 1e9:.2f} B others in float32")
    else:
        weights = total_params * stored
        weights_how = f"{total_params / 1e9:.2f} B parameters x {stored} bytes"

    targets = arch.linears() if cfg.lora.target_modules == "all-linear" else {
        n: io for n, io in arch.linears().items() if n in cfg.lora.target_modules}
    lora = arch.layers * sum(cfg.lora.r * (i + o) + (o if cfg.lora.use_dora else 0) for i, o in targets.values())
    new = _new_tokens(params, base_dir, source == str(base_dir / "config.json"))
    token_rows = new * arch.hidden * (1 if arch.tied else 2)
    trainable = lora + token_rows

    per_layer = _activations(arch, cfg, a, res)
    full = arch.layers * per_layer * tokens
    checkpointed = (arch.layers * res * arch.hidden + per_layer) * tokens
    loss_inputs = tokens * arch.hidden * (4 + 2 * res)  # final norm's float32 input, hidden states, their gradients
    chunk = cfg.loss_chunk_tokens * arch.vocab * (2 * a + 12)  # logits, float32 copy, log-softmax, their gradients
    head_cast = arch.vocab * arch.hidden * a if cfg.qlora.enabled and a < 4 else 0  # autocast copy of a float32 head

    activations = checkpointed if cfg.gradient_checkpointing else full
    items = [
        ("weights", weights, weights_how),
        ("trainable", trainable * 4, f"{trainable / 1e6:.1f} M float32: LoRA r{cfg.lora.r} on {len(targets)} linear "
                                     f"layer(s) x {arch.layers}" + (f", rows of {new} new token(s)" if new else "")),
        ("gradients", trainable * 4, "float32, one per trainable parameter"),
        ("optimizer", trainable * 8, "AdamW: two float32 moments per trainable parameter"),
        ("activations", activations,
         f"{per_layer / 1024:.1f} KiB per token per layer x {tokens} tokens"
         + (f"; checkpointed: {arch.layers} layer inputs + 1 layer recomputed" if cfg.gradient_checkpointing
            else f" x {arch.layers} layers")),
        ("loss", loss_inputs + chunk + head_cast,
         f"chunk of {cfg.loss_chunk_tokens} x {arch.vocab} logits {chunk / GIB:.2f} GiB + hidden states "
         f"{loss_inputs / GIB:.2f} GiB" + (f" + output layer cast for the matmul {head_cast / GIB:.2f} GiB"
                                            if head_cast else "")),
        ("reserve", RESERVE, "CUDA context, cuBLAS workspaces, fragmentation (a margin)"),
    ]
    total = sum(size for _, size, _ in items)
    return {"profile": params.profile, "source": source, "arch": arch, "params": total_params, "dtypes": dtypes,
            "micro_batch": micro_batch, "seq_len": cfg.max_seq_len, "items": items, "total": total,
            "activations": {"checkpointing": checkpointed, "none": full},
            "checkpointing": cfg.gradient_checkpointing}


def render(estimate: dict) -> str:
    arch: Arch = estimate["arch"]
    other = estimate["activations"]["none" if estimate["checkpointing"] else "checkpointing"]
    own = estimate["activations"]["checkpointing" if estimate["checkpointing"] else "none"]
    lines = [
        f"train --plan: profile {estimate['profile']}, one process, estimated (not measured)",
        f"model: {estimate['params'] / 1e9:.2f} B parameters, {arch.layers} layers, hidden {arch.hidden}, "
        f"intermediate {arch.intermediate}, {arch.heads}/{arch.kv_heads} heads of {arch.head_dim}, vocabulary "
        f"{arch.vocab}, output layer {'tied' if arch.tied else 'untied'} (from {estimate['source']})",
        f"micro-batch {estimate['micro_batch']} x {estimate['seq_len']} tokens; {estimate['dtypes']}; gradient "
        f"checkpointing {'on' if estimate['checkpointing'] else 'off'}",
    ]
    lines += [f"  {name:<12}{size / GIB:8.2f} GiB  {how}" for name, size, how in estimate["items"]]
    total = estimate["total"]
    lines.append(f"  {'total':<12}{total / GIB:8.2f} GiB")
    switched = total - own + other
    lines.append(f"gradient checkpointing {'off' if estimate['checkpointing'] else 'on'} instead: activations "
                 f"{other / GIB:.2f} GiB, total {switched / GIB:.2f} GiB")
    lines.append("fits: " + ", ".join(f"{gib} GiB {'yes' if total <= gib * GIB else 'no'}" for gib in GPU_GIB))
    return "\n".join(lines)
