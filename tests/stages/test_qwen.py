"""The Qwen family's own chat template (chat.template: native) on Qwen3's real tokenizer, the one
`make setup-dev` fetches (pinned, sha256-checked): golden label masks with think, a tool call and a
tool response; the thinking switch; refusals that name the fallback; the pinned cache itself."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import need_qwen3_tokenizer
from test_chat import _labelled_spans

from pipeline.data import chat_format
from pipeline.tools.search import SEARCH_TOOL

AGENT_ROW = [
    {"role": "system", "content": "You are a careful domain expert."},
    {"role": "user", "content": "Which element has atomic number 26?"},
    {"role": "assistant", "content": "<think>\nI should check the source.\n</think>",
     "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "atomic number 26"}}}]},
    {"role": "tool", "content": "[1] Iron has the symbol Fe and atomic number 26."},
    {"role": "assistant", "content": "<think>\nThe passage says iron.\n</think>\nIron (Fe)."},
]
GOLDEN = [
    '<think>\nI should check the source.\n</think>\n\n<tool_call>\n{"name": "search", "arguments": '
    '{"query": "atomic number 26"}}\n</tool_call><|im_end|>',
    "<think>\nThe passage says iron.\n</think>\n\nIron (Fe).<|im_end|>",
]


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    from pipeline.models.base import configure_tokenizer

    return configure_tokenizer(AutoTokenizer.from_pretrained(need_qwen3_tokenizer()), "native")


def test_golden_label_mask_on_qwen3s_own_template(qwen_tokenizer, tmp_path):
    """Exactly the assistant content and its <|im_end|> are labelled, in the batch SFTTrainer
    feeds the model: not the system or user turns, not the tool response (Qwen3 shows it in a
    user turn), not the role headers."""
    from conftest import compose_params
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from pipeline.config.params import load_params
    from pipeline.train.trainer import build_trainer

    tok = qwen_tokenizer
    assert chat_format.is_native(tok) and chat_format.turn_markers(tok) == ("<|im_start|>assistant\n", chat_format.IM_END)
    enc = chat_format.encode(tok, AGENT_ROW, tools=[SEARCH_TOOL])
    text = tok.decode(enc["input_ids"], skip_special_tokens=False)
    assert text == tok.apply_chat_template(AGENT_ROW, tools=[SEARCH_TOOL], tokenize=False)
    assert "# Tools" in text and '"name": "search"' in text  # Qwen3's own tool declaration
    assert "<|im_start|>user\n<tool_response>\n[1] Iron has" in text
    plain = chat_format.encode(tok, AGENT_ROW[:2] + [{"role": "assistant", "content": "Iron"}])
    cfg = load_params(compose_params(tmp_path, "train.batch_size=2", "train.packing=false")).train
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, head_dim=16,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         pad_token_id=tok.pad_token_id))
    examples = [{k: e[k] for k in ("input_ids", "labels")} for e in (enc, plain)]
    trainer = build_trainer(model, tok, examples, examples, cfg, output_dir=tmp_path / "ckpt")
    batch = next(iter(trainer.get_train_dataloader()))
    rows = sorted(range(2), key=lambda r: -int(batch["attention_mask"][r].sum()))
    ids, labels = batch["input_ids"][rows[0]].tolist(), batch["labels"][rows[0]].tolist()
    assert ids == enc["input_ids"]
    assert _labelled_spans(tok, labels) == GOLDEN
    im_end, im_start = tok.convert_tokens_to_ids(chat_format.IM_END), tok.convert_tokens_to_ids(chat_format.IM_START)
    assert ids.count(im_end) == 5  # system, user, call, tool, answer
    assert sum(1 for i, t in enumerate(ids) if t == im_end and labels[i] == im_end) == 2
    assert im_start not in [label for label in labels if label != -100]
    # A row without reasoning renders as Qwen3's non-thinking mode writes it: an empty think block.
    assert _labelled_spans(tok, batch["labels"][rows[1]].tolist()) == ["<think>\n\n</think>\n\nIron<|im_end|>"]
    assert chat_format.parse_output("<think>\n\n</think>\n\nIron")["answer"] == "Iron"


def test_the_gpu_profiles_student_template_qwen25_carries_every_row(tmp_path):
    """Qwen2.5-Instruct's own template (the gpu profile's student, chat.template: native): the same
    checks pass, its tool format is read back, and the labels are exact. It has no think tokens:
    <think> stays the text the model was trained on."""
    from transformers import AutoTokenizer

    from pipeline.models.base import configure_tokenizer

    tok = configure_tokenizer(AutoTokenizer.from_pretrained(need_qwen3_tokenizer("qwen2_5")), "native")
    assert chat_format.native_tool_problem(tok) is None and len(tok.encode("<think>", add_special_tokens=False)) > 1
    enc = chat_format.encode(tok, AGENT_ROW, tools=[SEARCH_TOOL])
    assert _labelled_spans(tok, enc["labels"]) == [
        GOLDEN[0].replace("</think>\n\n", "</think>\n"), GOLDEN[1].replace("</think>\n\n", "</think>\n")]
    plain = chat_format.encode(tok, AGENT_ROW[:2] + [{"role": "assistant", "content": "Iron"}])
    assert _labelled_spans(tok, plain["labels"]) == ["Iron<|im_end|>"]


def test_thinking_switch_and_the_rendered_prompt(qwen_tokenizer):
    prompt = chat_format.render_prompt(qwen_tokenizer, AGENT_ROW[:2])
    assert prompt.endswith("<|im_start|>user\nWhich element has atomic number 26?<|im_end|>\n<|im_start|>assistant\n")
    off = chat_format.render_prompt(qwen_tokenizer, AGENT_ROW[:2], enable_thinking=False)
    assert off == prompt + "<think>\n\n</think>\n\n" and not chat_format.opens_think(off)
    assert chat_format.render_prompt(qwen_tokenizer, AGENT_ROW[:2], enable_thinking=True) == prompt
    # evaluate's generation prompts follow eval.enable_thinking
    from pipeline.evaluation.harness import _encode

    assert _encode(qwen_tokenizer, AGENT_ROW[:2], None, False) == qwen_tokenizer(off, add_special_tokens=False)["input_ids"]


# A template of ours shaped like DeepSeek-R1-Distill's: not ChatML, and no tools.
NOT_CHATML = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
              "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<|endoftext|>{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}")
# ChatML without any tool format: every message's content only.
CHATML_NO_TOOLS = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_native_templates_the_pipeline_cannot_use_are_refused_with_the_fallback(qwen_tokenizer):
    import copy

    from pipeline.models.base import configure_tokenizer

    other = copy.deepcopy(qwen_tokenizer)
    other.chat_template = NOT_CHATML
    with pytest.raises(SystemExit, match=re.escape("ends an assistant turn with '<|endoftext|>'") + ".*"
                       + re.escape("Set chat.template: distillery")):
        configure_tokenizer(other, "native")
    plain = copy.deepcopy(qwen_tokenizer)
    plain.chat_template = CHATML_NO_TOOLS
    configure_tokenizer(plain, "native")  # a ChatML template is fine for rows without tools
    enc = chat_format.encode(plain, AGENT_ROW[:2] + [{"role": "assistant", "content": "Iron"}])
    assert _labelled_spans(plain, enc["labels"]) == ["Iron<|im_end|>"]
    with pytest.raises(ValueError, match=r"no tool-call format \(it does not declare the tools.*chat.template: distillery"):
        chat_format.encode(plain, AGENT_ROW, tools=[SEARCH_TOOL])
    # the same tokenizer with our template renders the tool rows
    configure_tokenizer(plain, "distillery")
    assert not chat_format.is_native(plain) and chat_format.encode(plain, AGENT_ROW, tools=[SEARCH_TOOL])["labels"]


def test_the_pinned_tokenizer_is_checked_by_sha256(tmp_path, monkeypatch):
    from pipeline.models import tokenizers

    folder = need_qwen3_tokenizer()
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path))
    with pytest.raises(tokenizers.MissingTokenizer, match="not found: fetch the qwen3 tokenizer with `make setup-dev`"):
        tokenizers.check("qwen3")
    copy = tokenizers.tokenizer_dir("qwen3")
    shutil.copytree(folder, copy)
    assert tokenizers.check("qwen3") == copy
    with (copy / "tokenizer_config.json").open("a") as f:
        f.write(" ")
    with pytest.raises(tokenizers.MissingTokenizer, match="tokenizer_config.json: sha256 .* pinned 5a7303fc"):
        tokenizers.check("qwen3")


def test_a_bpe_model_exports_to_gguf_with_parity_in_llama_cpp(qwen_exported):
    """Qwen3's byte-level BPE through llama.cpp's converter: token ids identical on every probe
    string (CJK, digits, tags, conversations in the native template), f32 logits agree at top-1,
    the GGUF carries Qwen3's own template, and each Modelfile its stop tokens."""
    from transformers import AutoTokenizer

    merged = AutoTokenizer.from_pretrained(qwen_exported / "models/merged")
    base = AutoTokenizer.from_pretrained(qwen_exported / "models/base")
    assert merged.chat_template == base.chat_template and chat_format.is_native(merged)
    report = json.loads((qwen_exported / "metrics/export.json").read_text())
    assert report["passed"] and report["failures"] == []
    for kind, r in report["gguf"].items():
        assert r["loads"] and r["template_and_eos"] and r["stops_at_end_of_turn"], kind
        assert r["tokenizer"]["identical"] == r["tokenizer"]["strings"] >= 12, kind
    full = report["gguf"]["f32"]
    assert full["top1_agreement"] == 1.0 and full["logits"]["positions"] > 50
    for gguf in (qwen_exported / "models/gguf").rglob("*.gguf"):
        lines = gguf.with_suffix(".Modelfile").read_text().splitlines()
        assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines
        assert not any(line.startswith("TEMPLATE") for line in lines)  # Ollama reads the GGUF's own
