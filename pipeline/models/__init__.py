"""The student model: building models/base from a tiny, Hugging Face or GGUF source (base,
gguf_source, check, tokenizers) and loading base, tuned and merged weights (loading)."""
