"""The memory estimate (`python -m pipeline.train --plan`): gpu-qlora-7b is held to its header's
claim; the per-layer activation count equals what autograd keeps on a tiny Qwen2 with LoRA
under bfloat16 autocast; models/base is read only when it is the configured model."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT, compose_params

from pipeline.config.params import load_params
from pipeline.train.memory_plan import GIB, Arch, _activations, architecture, plan


@pytest.fixture(scope="module")
def qlora_7b(tmp_path_factory):
    return compose_params(tmp_path_factory.mktemp("gpu-qlora-7b"), "profile=gpu-qlora-7b")


def test_gpu_qlora_7b_fits_the_gpu_its_profile_names(qlora_7b, tmp_path):
    """conf/profile/gpu-qlora-7b.yaml says it fits one 24 GiB GPU: the estimate agrees, and
    without gradient checkpointing it would not (the reason the profile turns it on)."""
    from pipeline.train.launch import batch_layout

    claim = re.search(r"fits one (\d+) GiB GPU", (ROOT / "conf/profile/gpu-qlora-7b.yaml").read_text())
    assert claim, "the profile's header no longer states the GPU it fits"
    params = load_params(qlora_7b)
    estimate = plan(params, batch_layout(params.train, 1)[0], base_dir=tmp_path / "none")
    assert estimate["checkpointing"] and estimate["micro_batch"] * estimate["seq_len"] == 4 * 2048
    assert estimate["total"] <= int(claim.group(1)) * GIB, estimate["total"] / GIB
    without = estimate["total"] - estimate["activations"]["checkpointing"] + estimate["activations"]["none"]
    assert without > int(claim.group(1)) * GIB

    out = subprocess.run([sys.executable, "-m", "pipeline.train", "--plan"], cwd=qlora_7b.parent, text=True,
                         capture_output=True, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert "vocabulary 152064, output layer untied (from model.arch (params.yaml))" in out.stdout
    assert re.search(r"total +\d+\.\d\d GiB", out.stdout) and "24 GiB yes" in out.stdout


def test_models_base_is_read_only_when_it_is_the_configured_model(qlora_7b, tmp_path):
    params = load_params(qlora_7b)
    base = tmp_path / "models/base"
    base.mkdir(parents=True)
    config = {"num_hidden_layers": 18, "hidden_size": 640, "intermediate_size": 2048, "vocab_size": 262153,
              "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "tie_word_embeddings": True}
    (base / "config.json").write_text(json.dumps(config))  # another profile's gemma-3-270m
    arch, source = architecture(params, base)
    assert source == "model.arch (params.yaml)" and arch.layers == 28 and not arch.tied
    config.update(num_hidden_layers=28, hidden_size=3584, intermediate_size=18944, vocab_size=152064,
                  num_attention_heads=28, num_key_value_heads=4, head_dim=None, tie_word_embeddings=False)
    (base / "config.json").write_text(json.dumps(config))
    assert architecture(params, base) == (Arch(28, 3584, 18944, 152064, 28, 4, 128, False), str(base / "config.json"))


def test_activation_count_is_what_autograd_keeps(tmp_path):
    """The per-token bytes of a decoder layer (pipeline.train.memory_plan._activations) against the
    tensors autograd saves for one layer of a tiny Qwen2 with LoRA on every linear layer, in
    bfloat16 under autocast as the Trainer runs it on a GPU (a middle layer: its input needs
    gradients, as every layer's but the first does). Parameters are not activations."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    params = load_params(compose_params(tmp_path, "train.lora.target_modules=all-linear"))
    arch = Arch(layers=3, hidden=256, intermediate=704, vocab=512, heads=8, kv_heads=2, head_dim=32, tied=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=arch.vocab, hidden_size=arch.hidden,
                                         intermediate_size=arch.intermediate, num_hidden_layers=arch.layers,
                                         num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads,
                                         attn_implementation="sdpa"))
    model = get_peft_model(model.to(torch.bfloat16), LoraConfig(r=params.train.lora.r, target_modules="all-linear"))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    layer = model.base_model.model.model.layers[1]
    kept, inside = {}, [False]

    rows, length = 2, 96

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        # by the leading dimension: activations, not the copies of LoRA's weights autocast makes
        if inside[0] and ptr not in weights and t.shape[0] in (rows, rows * length):
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    layer.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
    layer.register_forward_hook(lambda *_: inside.__setitem__(0, False))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=torch.randint(0, arch.vocab, (rows, length)), use_cache=False)
    measured = sum(kept.values()) / (rows * length)
    counted = _activations(arch, params.train, a=2, res=2)
    assert measured == pytest.approx(counted, rel=0.02), (measured, counted)
