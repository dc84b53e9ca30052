"""Teacher synthesis: backends (vLLM engine, OpenAI-compatible HTTP, transformers), the request
cache, the tasks (think, search, qgen) and the stage (`python -m pipeline.synth`)."""
