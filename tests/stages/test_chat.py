"""The chat format and the golden label masks: in a multi-turn conversation with a tool call
and a tool response, exactly the assistant tokens and their end-of-turn tokens carry labels,
as seen by the collator TRL's SFTTrainer uses."""

from __future__ import annotations

import pytest

from pipeline.data import chat_format

TOOLS = [{"type": "function", "function": {"name": "search", "description": "Search the crawled pages.",
                                           "parameters": {"type": "object",
                                                          "properties": {"query": {"type": "string"}}}}}]
CONVERSATION = [
    {"role": "system", "content": "You are a careful domain expert."},
    {"role": "user", "content": "Which element has atomic number 26?"},
    {"role": "assistant", "content": "<think>\nI should check the source.\n</think>",
     "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "atomic number 26"}}}]},
    {"role": "tool", "content": "Iron has the symbol Fe and atomic number 26."},
    {"role": "assistant", "content": "Iron (Fe)."},
    {"role": "user", "content": "And its symbol?"},
    {"role": "assistant", "content": "Fe"},
]
GOLDEN_LABELLED = [
    '<think>\nI should check the source.\n</think>\n<tool_call>\n{"name": "search", "arguments": '
    '{"query": "atomic number 26"}}\n</tool_call><|im_end|>',
    "Iron (Fe).<|im_end|>",
    "Fe<|im_end|>",
]


def _labelled_spans(tokenizer, labels) -> list[str]:
    spans, current = [], []
    for label in labels + [-100]:
        if label != -100:
            current.append(label)
        elif current:
            spans.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
    return spans


def test_chat_and_tag_tokens_are_single_tokens(tiny_tokenizer):
    for tag in chat_format.CONTROL_TOKENS + chat_format.TAG_TOKENS:
        ids = tiny_tokenizer.encode(tag, add_special_tokens=False)
        assert len(ids) == 1, (tag, ids)
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.eos_token == chat_format.IM_END


def test_golden_label_mask_in_the_sft_trainer_batch(tiny_tokenizer, tmp_path):
    """The batch SFTTrainer feeds the model: labels exactly on the assistant turns."""
    from conftest import compose_params
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.config.params import load_params
    from pipeline.train.trainer import build_trainer

    enc = chat_format.encode(tiny_tokenizer, CONVERSATION, tools=TOOLS)
    short = chat_format.encode(tiny_tokenizer, CONVERSATION[:2] + [{"role": "assistant", "content": "Iron"}])
    examples = [{k: e[k] for k in ("input_ids", "labels")} for e in (enc, short)]
    cfg = load_params(compose_params(tmp_path, "train.batch_size=2", "train.packing=false")).train
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         pad_token_id=tiny_tokenizer.pad_token_id))
    trainer = build_trainer(model, tiny_tokenizer, examples, examples, cfg, output_dir=tmp_path / "ckpt")
    batch = next(iter(trainer.get_train_dataloader()))
    rows = sorted(range(2), key=lambda r: -int(batch["attention_mask"][r].sum()))
    ids, labels = batch["input_ids"][rows[0]].tolist(), batch["labels"][rows[0]].tolist()
    assert ids == enc["input_ids"]
    assert _labelled_spans(tiny_tokenizer, labels) == GOLDEN_LABELLED

    im_end = tiny_tokenizer.convert_tokens_to_ids(chat_format.IM_END)
    im_start = tiny_tokenizer.convert_tokens_to_ids(chat_format.IM_START)
    # Every <|im_end|> closing an assistant turn is learned; those of other turns are not.
    assert sum(1 for i, t in enumerate(ids) if t == im_end and labels[i] == im_end) == 3
    assert ids.count(im_end) == 7
    assert im_start not in [label for label in labels if label != -100]
    # The padded row: pad positions (pad is not eos) carry no label, its own end-of-turn does.
    padded_ids, padded = batch["input_ids"][rows[1]].tolist(), batch["labels"][rows[1]].tolist()
    assert _labelled_spans(tiny_tokenizer, padded) == ["Iron<|im_end|>"]
    n = len(short["input_ids"])
    assert padded_ids[n:] == [tiny_tokenizer.pad_token_id] * (len(ids) - n)
    assert padded[n:] == [-100] * (len(ids) - n)
    assert tiny_tokenizer.pad_token_id != im_end


def test_rendered_text_is_the_template(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=False, chat_template=chat_format.CHAT_TEMPLATE)
    assert text.startswith("<|im_start|>system\nYou are a careful domain expert.\n\n# Tools\n")
    assert "<tools>\n{" in text and "\"name\": \"search\"" in text and text.count("<|im_start|>system") == 1
    assert "<|im_start|>tool\n<tool_response>\nIron has the symbol Fe and atomic number 26.\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\nFe<|im_end|>\n")
    prompt, reference = chat_format.prompt_and_reference(CONVERSATION)
    assert reference == "Fe"
    assert chat_format.render_prompt(tiny_tokenizer, prompt).endswith("<|im_start|>user\nAnd its symbol?<|im_end|>\n<|im_start|>assistant\n")


def test_encode_truncates_and_says_so(tiny_tokenizer):
    enc = chat_format.encode(tiny_tokenizer, CONVERSATION, max_len=10)
    assert enc["truncated"] and len(enc["input_ids"]) == 10 == len(enc["labels"])


@pytest.mark.parametrize("text,expected", [
    ("<think>\nhmm\n</think>\nB. Iron<|im_end|>", {"think": "hmm", "answer": "B. Iron", "tool_calls": []}),
    ('<tool_call>\n{"name": "search", "arguments": {"query": "Fe"}}\n</tool_call>',
     {"think": None, "answer": "", "tool_calls": [{"name": "search", "arguments": {"query": "Fe"}}]}),
])
def test_parse_output(text, expected):
    parsed = chat_format.parse_output(text)
    for key, value in expected.items():
        assert parsed[key] == value
    assert parsed["invalid_tool_calls"] == []


def test_parse_output_counts_invalid_tool_calls():
    parsed = chat_format.parse_output("<tool_call>{not json}</tool_call>")
    assert parsed["tool_calls"] == [] and parsed["invalid_tool_calls"] == ["{not json}"]


def test_record_to_messages_mcq():
    rec = {"question": "Symbol of Iron?", "options": {"A": "Fe", "B": "Ir"}, "answer": "A",
           "explanation": "Iron is Fe."}
    msgs = chat_format.record_to_messages(rec, "sys")
    assert msgs[1]["content"] == "Symbol of Iron?\nA. Fe\nB. Ir"
    assert msgs[2]["content"] == "A. Fe\nIron is Fe."


def test_a_tokenizer_that_adds_bos_gets_it_once_in_front_of_every_conversation(tiny_tokenizer, tmp_path):
    """Gemma's tokenizer adds <bos> to every text, and Gemma expects it; apply_chat_template
    adds no special tokens, so the template itself starts with the BOS for such tokenizers
    (and only for them: the tiny tokenizer adds none)."""
    from transformers import AutoTokenizer

    from pipeline.models.base import configure_tokenizer

    assert not chat_format.adds_bos(tiny_tokenizer) and tiny_tokenizer.chat_template == chat_format.CHAT_TEMPLATE
    tiny_tokenizer.save_pretrained(tmp_path)
    tok = configure_tokenizer(AutoTokenizer.from_pretrained(tmp_path, add_bos_token=True))
    bos = tok.bos_token_id
    assert chat_format.adds_bos(tok) and tok.chat_template == chat_format.BOS_PREFIX + chat_format.CHAT_TEMPLATE
    enc = chat_format.encode(tok, CONVERSATION, tools=TOOLS)
    assert enc["input_ids"][0] == bos and enc["input_ids"].count(bos) == 1 and enc["labels"][0] == -100
    prompt = chat_format.render_prompt(tok, CONVERSATION[:2])
    assert prompt.startswith(tok.bos_token)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == bos and ids.count(bos) == 1
    assert chat_format.template_for(tok, inference=True) == chat_format.BOS_PREFIX + chat_format.INFERENCE_CHAT_TEMPLATE
