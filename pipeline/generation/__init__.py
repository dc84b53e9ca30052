"""Generating with a teacher: the engines (vLLM, transformers, an OpenAI-compatible server), the
request cache, the teacher runner, the synth tasks and their verification (tasks, synthesize) and
OpenAI batch files (batch)."""
