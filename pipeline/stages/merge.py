"""Stage merge: the LoRA adapter merged into the full-precision base, saved to models/merged.

The checkpoint is what llama.cpp's converter reads without guessing: it carries the SentencePiece model, the added
tokens' types, the chat template for inference and the end-of-turn token as eos (checked after saving). The merge
itself is pipeline.models.merge (evaluate uses it too).

    python -m pipeline.stages.merge        # dvc repro merge

Guide: docs/export.md
"""

from __future__ import annotations

from pipeline.config import Device, sections_or_exit
from pipeline.models.loading import merge
from pipeline.paths import ADAPTER_DIR, BASE_DIR, MERGED_DIR
from pipeline.runtime.device import require as require_device


def main() -> None:
    params = sections_or_exit(device=Device)  # its section must be valid before anything heavy loads
    # The merge runs in float32 on the CPU wherever the rest runs; a gpu profile on a machine
    # whose torch cannot use CUDA still fails here, as every stage that loads a model does.
    require_device(params.device, "merge")
    info = merge()
    print(f"merge: {ADAPTER_DIR} merged into {BASE_DIR} -> {MERGED_DIR} "
          f"({info['parameters']:,} parameters, {info['dtype']}, eos {info['eos_token_id']})")


if __name__ == "__main__":
    main()
