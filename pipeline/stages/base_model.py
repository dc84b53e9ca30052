"""Stage base_model: the student before fine-tuning, saved to models/base.

One place decides the model every later stage starts from: the tiny random model built here, or a pretrained one (a
Hugging Face id or directory, or a GGUF file, dequantized), with our tokenizer settings, the chat and tag tokens it
lacks added, and the one chat template (pipeline.data.chat_format) or, with `chat.template: native`, its own.

    python -m pipeline.stages.base_model     # reads params.yaml (dvc repro base_model)

Guide: docs/profiles.md
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
