"""Stage quantize: a smaller GGUF for every type in export.quant, each with an Ollama Modelfile next to it.

They are made from the convert stage's file by llama.cpp's quantizer, as llama-cpp-python exposes it
(llama_model_quantize); verify_export then says which of them keep the model's behaviour.

    python -m pipeline.stages.quantize    # dvc repro quantize

Guide: docs/export.md
"""

from __future__ import annotations

import os

from pipeline.config import sections_or_exit
from pipeline.config.chat import ChatConfig
from pipeline.config.export import ExportConfig
from pipeline.export.quantize import quantize
from pipeline.paths import FULL_DIR, MERGED_DIR, QUANT_DIR


def main() -> None:
    params = sections_or_exit(chat=ChatConfig, export=ExportConfig)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quantize(FULL_DIR, QUANT_DIR, MERGED_DIR, params)


if __name__ == "__main__":
    main()
