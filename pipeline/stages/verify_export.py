"""Stage verify_export: every GGUF we wrote, loaded in llama.cpp and held against the merged HF
model it came from. Results in metrics/export.json; any failed check fails the stage with a
message that says what differs (the metrics file is written first, so nothing is lost).

Checks, per GGUF (full precision and each quantization):
- loads in llama.cpp (llama-cpp-python, the same build `make setup` installs);
- tokenizer parity: llama.cpp's token ids equal transformers' on fixed strings (English, CJK,
  digits, whitespace, the turn/think/tool tags) and on whole conversations rendered with the
  chat template, BOS/EOS policy included; and the ids decode to the same text in both (special
  tokens hidden, think and tool tags kept);
- chat template and eos in the GGUF metadata: the template renders exactly like the HF one, the
  eos id is the end-of-turn token and llama.cpp counts it as end of generation;
- logits parity on test questions rendered as prompts: top-1 agreement and max |difference|
  (full precision must agree on every position; positions whose two best HF logits are within
  export.verify.tie_tolerance count as ties); quantized files report their agreement;
- greedy generation in llama.cpp: every generated token agrees with HF's argmax on the same
  prefix; where the model ends its turn it is with the end-of-turn token, and llama-cpp-python's
  own completion API stops there (finish_reason "stop", the token not printed);
- the format of the answers, relative to the merged model's own greedy answers on the same
  prompts: think rate (question prompts), stop rate, and valid search calls per tool prompt,
  each within export.verify.format_margin of the merged model's (a quantization that loses
  the think block or the end of turn fails here even when its logits mostly agree);
- file sizes, and llama.cpp vs transformers tokens/s generating the same number of tokens from
  the same prompt (prompt processing included; the best of three runs each).

Each file gets its own `passed`. The file `make serve-gguf` serves is serve.gguf, or with
`best` (the default) the smallest file that passed (recorded under `served` in
metrics/export.json, with its Modelfile); the stage fails only when that file fails (or, with
`best`, when none passed). Failures of the other files are reported, not fatal.

    python -m pipeline.stages.verify_export        # dvc repro verify_export
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
