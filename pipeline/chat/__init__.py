"""Talking to the tuned model: the chat client with the search tool (agent; `python -m pipeline.chat`)
and the server behind `make serve` (serve). The chat format itself is pipeline/data/chat_format.py."""
