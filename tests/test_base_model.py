"""The tiny base model: same params and corpus, same bytes; our tokenizer conventions hold."""

from __future__ import annotations

import hashlib
import json
import shutil

from pipeline import chat


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_tiny_base_model_is_byte_reproducible(crawled_workspace, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.base_model import build
    from pipeline.config import load_params

    ws = tmp_path / "ws"
    shutil.copytree(crawled_workspace / "data", ws / "data")
    shutil.copy(crawled_workspace / "params.yaml", ws / "params.yaml")
    monkeypatch.chdir(ws)
    params = load_params()
    build(params.model, params.seed, params.chat.system_prompt, ws / "a")
    build(params.model, params.seed, params.chat.system_prompt, ws / "b")
    assert _digest(ws / "a") == _digest(ws / "b")
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(_digest(ws / "a"))
    # No loading option in the saved files: HF_HUB_OFFLINE=1 (set for the tests) or not, the
    # same bytes (transformers wrote local_files_only: true/false into tokenizer_config.json).
    assert "local_files_only" not in json.loads((ws / "a/tokenizer_config.json").read_text())

    tok = AutoTokenizer.from_pretrained(ws / "a")
    model = AutoModelForCausalLM.from_pretrained(ws / "a")
    assert tok.chat_template == chat.CHAT_TEMPLATE
    assert tok.pad_token_id != tok.eos_token_id == tok.convert_tokens_to_ids(chat.IM_END)
    assert model.config.vocab_size == len(tok)
    assert tok.eos_token_id in model.generation_config.eos_token_id

    build(params.model, params.seed + 1, params.chat.system_prompt, ws / "c")
    assert _digest(ws / "c")["model.safetensors"] != _digest(ws / "a")["model.safetensors"]


def test_hf_source_takes_our_template_and_keeps_the_weights(crawled_workspace, tmp_path, monkeypatch):
    """source `hf` with a local directory (no hub access): a model saved with another template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.base_model import build
    from pipeline.config import ModelConfig, load_params

    shutil.copytree(crawled_workspace / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    params = load_params(crawled_workspace / "params.yaml")
    build(params.model, params.seed, params.chat.system_prompt, tmp_path / "src")
    tok = AutoTokenizer.from_pretrained(tmp_path / "src")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(tmp_path / "src")

    build(ModelConfig(source="hf", hf_id=str(tmp_path / "src")), params.seed, "", tmp_path / "out")
    out_tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert out_tok.chat_template == chat.CHAT_TEMPLATE
    assert out_tok.eos_token == chat.IM_END and out_tok.pad_token_id != out_tok.eos_token_id
    src = AutoModelForCausalLM.from_pretrained(tmp_path / "src").state_dict()
    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert src.keys() == out.keys() and all(torch.equal(src[k], out[k]) for k in src)


def test_a_materialised_base_is_checked_against_its_source_gguf(crawled_workspace, tmp_path, monkeypatch):
    """pipeline.base_check (what base_model runs on a GGUF source, e.g. gemma-3-270m), on the tiny
    model: a checkpoint whose source is its own q8_0 GGUF passes (same token ids, reconverted f32
    top-1 100%, source top-1 high); a checkpoint whose weights went wrong on the way (here its
    final norm negated, as a bad dequantization might) fails against the same source, saying so."""
    import subprocess

    from safetensors.torch import load_file, save_file

    from pipeline.base_check import CHECK_TEXT, check
    from pipeline.base_model import build
    from pipeline.config import load_params
    from pipeline.gguf_tools import converter_command, quantize_file

    monkeypatch.chdir(crawled_workspace)
    params = load_params()
    text = CHECK_TEXT.split("\n\n")[0]  # within the tiny model's 512 positions
    base = tmp_path / "base"
    build(params.model, params.seed, params.chat.system_prompt, base)
    # The BOS policy spelled out for the converter, as merge writes it for export.
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.update(add_bos_token=False, add_eos_token=False, add_prefix_space=False)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    subprocess.run([*converter_command(), str(base), "--outtype", "f32", "--outfile", str(tmp_path / "base-f32.gguf")],
                   check=True, capture_output=True)
    source = tmp_path / "base-q8_0.gguf"
    quantize_file(tmp_path / "base-f32.gguf", source, "q8_0", 2)

    # The tiny random model's logits are ~1e-3 apart: no tie tolerance, or every position is a tie.
    report = check(base, source, text=text, tie_tolerance=0.0)
    assert report["passed"] and report["failures"] == [], report["failures"]
    assert report["tokenizer"]["identical"] == report["tokenizer"]["strings"] == 4
    assert report["reconverted_f32"]["top1_agreement"] == 1.0 and report["reconverted_f32"]["positions"] > 100
    assert 0.9 <= report["source"]["top1_agreement"] <= 1.0 and report["adds_bos"] is False  # tiny: no BOS

    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    weights = load_file(broken / "model.safetensors")
    weights["model.norm.weight"] = -weights["model.norm.weight"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    other = check(broken, source, text=text, tie_tolerance=0.0)
    assert not other["passed"] and other["reconverted_f32"]["top1_agreement"] == 1.0  # it is itself consistent
    assert other["source"]["top1_agreement"] < 0.5
    assert [f.split(":")[0] for f in other["failures"]] == ["source base-q8_0.gguf"]
    assert "is below 0.9" in other["failures"][0] and "the dequantized weights are wrong" in other["failures"][0]
