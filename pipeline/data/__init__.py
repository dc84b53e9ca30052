"""Rows and their formats: the chat format every stage renders and parses (chat_format), records
and the SFT rows in JSONL (records), text normalisation (text), cleaning crawled items (clean),
importing datasets (imports) and exam sets (evalsets)."""
