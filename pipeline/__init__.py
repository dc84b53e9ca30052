"""Distillery: domain web pages -> a fine-tuned small LLM, one DVC stage per module."""
