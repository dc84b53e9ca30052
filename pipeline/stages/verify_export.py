"""Stage verify_export: every GGUF we wrote, loaded in llama.cpp and held against the merged HF model it came from.

A GGUF can load and still differ in its tokens, template, end of turn, logits or answers. Each file gets its checks and
its own `passed` in metrics/export.json (written first); the stage fails, saying what differs, only when the file
`make serve-gguf` serves fails (with `best`, when none passed).

    python -m pipeline.stages.verify_export        # dvc repro verify_export

Guide: docs/export.md
"""

from __future__ import annotations

import os
import sys

from pipeline.config import Device, sections_or_exit
from pipeline.config.chat import ChatConfig
from pipeline.config.export import ExportConfig
from pipeline.config.serve import ServeConfig
from pipeline.export.verify import summary, verify
from pipeline.paths import EXPORT_METRICS, MERGED_DIR
from pipeline.runtime.device import require as require_device


def main() -> None:
    params = sections_or_exit(device=Device, chat=ChatConfig, export=ExportConfig, serve=ServeConfig)
    device = require_device(params.device, "verify_export")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = verify(params, device=device)
    served = report["served"]
    print(f"verify_export: {len(report['gguf'])} GGUF files against {MERGED_DIR} -> {EXPORT_METRICS}\n{summary(report)}")
    for failure in report["failures"]:
        print(f"  failed: {failure}")
    if not served["passed"]:
        why = served.get("why") or f"{served['file']} (serve.gguf={served['chosen']}) failed its checks"
        sys.exit(f"error: export verification failed: the GGUF to serve: {why}:\n  " + "\n  ".join(report["failures"]))
    print(f"verify_export: make serve-gguf serves {served['file']} (serve.gguf={served['chosen']}); "
          f"Ollama: ollama create {params.export.name} -f {served['modelfile']}")


if __name__ == "__main__":
    main()
