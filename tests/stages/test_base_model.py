"""The tiny base model: same params and corpus, same bytes; our tokenizer conventions hold."""

from __future__ import annotations

import hashlib
import json
import shutil

from pipeline.data import chat_format


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_tiny_base_model_is_byte_reproducible(crawled_workspace, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.config.params import load_params
    from pipeline.models.base import build

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
    assert tok.chat_template == chat_format.CHAT_TEMPLATE
    assert tok.pad_token_id != tok.eos_token_id == tok.convert_tokens_to_ids(chat_format.IM_END)
    assert model.config.vocab_size == len(tok)
    assert tok.eos_token_id in model.generation_config.eos_token_id

    build(params.model, params.seed + 1, params.chat.system_prompt, ws / "c")
    assert _digest(ws / "c")["model.safetensors"] != _digest(ws / "a")["model.safetensors"]


def test_hf_source_takes_our_template_and_keeps_the_weights(crawled_workspace, tmp_path, monkeypatch):
    """source `hf` with a local directory (no hub access): a model saved with another template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.config.model import ModelConfig
    from pipeline.config.params import load_params
    from pipeline.models.base import build

    shutil.copytree(crawled_workspace / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    params = load_params(crawled_workspace / "params.yaml")
    build(params.model, params.seed, params.chat.system_prompt, tmp_path / "src")
    tok = AutoTokenizer.from_pretrained(tmp_path / "src")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(tmp_path / "src")

    build(ModelConfig(source="hf", hf_id=str(tmp_path / "src")), params.seed, "", tmp_path / "out")
    out_tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert out_tok.chat_template == chat_format.CHAT_TEMPLATE
    assert out_tok.eos_token == chat_format.IM_END and out_tok.pad_token_id != out_tok.eos_token_id
    src = AutoModelForCausalLM.from_pretrained(tmp_path / "src").state_dict()
    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert src.keys() == out.keys() and all(torch.equal(src[k], out[k]) for k in src)


def test_a_materialised_base_is_checked_against_its_source_gguf(crawled_workspace, tmp_path, monkeypatch):
    """pipeline.models.check (what base_model runs on a GGUF source, e.g. gemma-3-270m), on the tiny
    model: a checkpoint whose source is its own q8_0 GGUF passes (same token ids, reconverted f32
    top-1 100%, source top-1 high); a checkpoint whose weights went wrong on the way (here its
    final norm negated, as a bad dequantization might) fails against the same source, saying so."""
    import subprocess

    from safetensors.torch import load_file, save_file

    from pipeline.config.params import load_params
    from pipeline.export.gguf import converter_command, quantize_file
    from pipeline.models.base import build
    from pipeline.models.check import CHECK_TEXT, check

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


def _small_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=3, tie_word_embeddings=tie)
    with no_init_weights():
        model = LlamaForCausalLM(config)
    model.tie_weights()
    return model


def test_initialisation_is_integer_arithmetic_with_pinned_bytes():
    """models/base must be the same bytes on any CPU: the tiny model's weights are sums of PCG64's
    uniforms (no torch sampler, no log or cosine, whose vectorised versions depend on the
    instruction set), so they equal the numpy expression below and a digest pinned here, with the
    spread of transformers' N(0, 0.02^2) init; the rows added to a pretrained vocabulary are the
    exact mean of the others, whatever the row order."""
    import numpy as np
    import torch

    from pipeline.models.base import exact_row_mean, init_added_rows, init_weights_portably

    model = _small_llama(tie=True)
    init_weights_portably(model, seed=7, std=0.02)
    rng = np.random.Generator(np.random.PCG64(7))
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(param == 1.0)
        else:
            want = ((sum(rng.random(param.shape) for _ in range(12)) - 6.0) * 0.02).astype(np.float32)
            if name == "model.embed_tokens.weight":
                want[3] = 0.0  # the padding row
            assert np.array_equal(param.detach().numpy(), want), name
        digest.update(param.detach().numpy().tobytes())
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert abs(float(model.model.layers[0].mlp.up_proj.weight.std()) - 0.02) < 0.001
    assert digest.hexdigest() == "93184f5316aacd083bca35994f7886869f5afbdb9442198fd8de614b8d4e88b4"

    weight = torch.from_numpy(rng.standard_normal((5000, 16)).astype(np.float32))
    mean = exact_row_mean(weight)
    assert torch.equal(mean, exact_row_mean(weight[torch.randperm(5000)]))
    assert torch.allclose(mean, weight.double().mean(0).float(), rtol=0, atol=1e-7)
    for tie in (True, False):
        model = _small_llama(tie)
        init_weights_portably(model, seed=0, std=0.02)
        embed, head = model.model.embed_tokens.weight.detach().clone(), model.lm_head.weight.detach().clone()
        init_added_rows(model, 300, 305)
        assert torch.equal(model.model.embed_tokens.weight[:300], embed)
        assert all(torch.equal(row, exact_row_mean(embed)) for row in model.model.embed_tokens.weight[300:])
        assert all(torch.equal(row, exact_row_mean(head)) for row in model.lm_head.weight[300:])
