"""The `train` section: LoRA/QLoRA fine-tuning with TRL."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError

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
    """Labelled positions whose logits the loss computes at once (pipeline.train.loss): the output
    layer's memory is this many rows over the vocabulary, not the whole micro-batch's. 256 rows
    of Qwen's 152k vocabulary take ~0.6 GiB with their gradients (gemma's 262k in float32:
    ~1.3 GiB), where all 8,192 positions of a 4 x 2048 micro-batch would take ~19 GiB;
    and 256 rows still make a matrix product wide enough to keep a GPU busy. The loss does not
    depend on it beyond the order of float sums."""
    repeat: dict[Literal["plain", "think", "search", "qgen", "conversation", "text"], int] = field(default_factory=dict)
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
