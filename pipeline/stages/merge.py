"""Stage merge: the LoRA adapter merged into the full-precision base, saved as a HF checkpoint
that llama.cpp's converter reads without guessing.

What it writes to models/merged, beyond save_pretrained's files:
- tokenizer.model, the SentencePiece model, when the base has one (transformers 5 saves only
  tokenizer.json; without tokenizer.model the converter treats a SentencePiece vocabulary as an
  unknown BPE one);
- added_tokens_decoder in tokenizer_config.json, so the converter types the turn and tag tokens
  as control / user-defined tokens and llama.cpp keeps each one a single token;
- the chat template without training-only markers (chat.INFERENCE_CHAT_TEMPLATE);
- eos = the end-of-turn token in config.json, generation_config.json and the tokenizer,
  checked after saving: a merge that loses it fails here, not in a user's Ollama.

The merge itself is pipeline.models.merge (evaluate uses it too).

    python -m pipeline.stages.merge        # dvc repro merge
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
