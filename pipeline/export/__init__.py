"""Export: the tuned model as files people ship, one DVC stage per step (merge, convert, quantize, verify_export).

The library modules the stages share: pipeline/models/loading.py (merge), gguf.py (llama.cpp's converter and
quantizer, Ollama Modelfiles) and parity.py (HF vs llama.cpp). Docs: docs/export.md.
"""
