"""Training: packed batches keep samples independent; the chunked loss over labelled positions is
the model's own loss; new tokens added in a padded vocabulary with an untied output layer start at
the mean and train both their rows; a run killed with SIGKILL resumes to the
same adapter; two processes (with gradient checkpointing) keep the effective batch and the eval
loss, and two nodes of one process each give the two processes' adapter; QLoRA (with gradient
checkpointing, two processes) trains on CPU and its adapter lands on the full-precision base;
early stopping keeps the best checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import compose_params, free_port, run_stage, stage_env

from pipeline.data import chat_format
from pipeline.tools.search import SEARCH_TOOL

# A short run on the tiny base: 24 optimizer steps of 8 rows, a checkpoint every 4.
SHORT_RUN = ("train.max_steps=24", "train.eval_steps=4", "train.batch_size=8", "train.logging_steps=2",
             "train.max_seq_len=256", "train.early_stopping.patience=0")


def _tiny_llama(vocab: int = 300):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        pad_token_id=0, attn_implementation="sdpa")).eval()


def _per_sample_loss(logits, labels, spans):
    """Summed next-token loss of each (row, start, end) span of a batch."""
    import torch.nn.functional as F

    out = []
    for row, start, end in spans:
        lg, lb = logits[row, start:end - 1], labels[row, start + 1:end]
        out.append(float(F.cross_entropy(lg, lb, ignore_index=-100, reduction="sum")))
    return out


def test_packed_batch_gives_each_sample_its_unpacked_loss():
    import torch

    from pipeline.train.packing import SFTCollator

    gen = torch.Generator().manual_seed(1)
    lengths = [37, 5, 120, 64, 9, 88, 23, 50]  # length-skewed
    examples = []
    for n in lengths:
        ids = torch.randint(4, 300, (n,), generator=gen).tolist()
        labels = [-100] * (n // 3) + ids[n // 3:]
        examples.append({"input_ids": ids, "labels": labels})
    model = _tiny_llama()

    padded = SFTCollator(pad_token_id=0)(examples)
    packed = SFTCollator(pad_token_id=0, pack=True, row_len=128)(examples)
    assert packed["input_ids"].shape[0] < len(examples) and packed["input_ids"].shape[1] <= 128
    assert "attention_mask" not in packed

    # Where each example landed in the packed batch: position ids restart at its first token.
    spans, placed = [], []
    for row in range(packed["input_ids"].shape[0]):
        pos = packed["position_ids"][row].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0]
        for s, e in zip(starts, starts[1:] + [None]):
            n = next(j for j, ex in enumerate(examples) if j not in placed
                     and packed["input_ids"][row, s:s + len(ex["input_ids"])].tolist() == ex["input_ids"])
            placed.append(n)
            spans.append((row, s, s + lengths[n]))
    assert sorted(placed) == list(range(len(examples)))

    # As in training: no KV cache (transformers reads packed sequences from position ids only then).
    with torch.no_grad():
        want = _per_sample_loss(model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                                      use_cache=False).logits, padded["labels"], [(i, 0, n) for i, n in enumerate(lengths)])
        got = _per_sample_loss(model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                                     use_cache=False).logits, packed["labels"], spans)
        # The control: the same rows without position ids attend across samples and lose equality.
        leaked = _per_sample_loss(model(input_ids=packed["input_ids"], use_cache=False).logits, packed["labels"], spans)
    assert [got[placed.index(i)] for i in range(len(examples))] == pytest.approx(want, rel=1e-5)
    assert [leaked[placed.index(i)] for i in range(len(examples))] != pytest.approx(want, rel=1e-3)


def _packed_batch(vocab: int = 300):
    import torch

    from pipeline.train.packing import SFTCollator

    gen = torch.Generator().manual_seed(2)
    examples = []
    for n in (40, 17, 90, 33, 61):
        ids = torch.randint(4, vocab, (n,), generator=gen).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (2 * n // 3) + ids[2 * n // 3:]})
    return SFTCollator(pad_token_id=0, pack=True, row_len=128)(examples)


def _loss_and_grads(model, loss_fn):
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_loss_and_grads(model, batch, chunk_tokens):
    """pipeline.train.loss against the model's own loss over every position: within 1e-6, loss and
    every gradient. Returns the largest differences."""

    from pipeline.train.loss import chunked_label_loss

    want, want_grads = _loss_and_grads(model, lambda: model(**batch, use_cache=False).loss)
    got, got_grads = _loss_and_grads(model, lambda: chunked_label_loss(model, batch, chunk_tokens=chunk_tokens)[0])
    assert sorted(got_grads) == sorted(want_grads)
    loss_diff = abs(got.item() - want.item())
    grad_diff = max(float((got_grads[n] - want_grads[n]).abs().max()) for n in want_grads)
    assert loss_diff <= 1e-6 and grad_diff <= 1e-6, (loss_diff, grad_diff)
    assert any(float(g.abs().max()) > 1e-3 for g in want_grads.values())  # gradients worth comparing
    return loss_diff, grad_diff


def test_chunked_label_loss_equals_the_full_loss_and_its_gradients():
    """The output layer on labelled positions only, 16 at a time (82 are labelled): the model's
    own loss and gradients within 1e-6 (the mean, and the sum over num_items_in_batch under
    accumulation); no tensor over the vocabulary holds more than one chunk's rows, forward or
    backward; a batch without labels gives zero with gradients (zero) for every parameter."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from pipeline.train.loss import chunked_label_loss

    batch = _packed_batch()
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    model = _tiny_llama().train()
    assert labelled > 16
    _assert_same_loss_and_grads(model, batch, chunk_tokens=16)

    class LargestOverVocabulary(TorchDispatchMode):
        rows = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                # (64, 300): the output layer's weight and its gradient, transposed
                if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == 300 and t.shape != (64, 300):
                    self.rows = max(self.rows, t.numel() // 300)
            return out

    with LargestOverVocabulary() as seen:
        loss, out = chunked_label_loss(model, batch, chunk_tokens=16)
        loss.backward()
    assert seen.rows == 16 and out.logits.shape[1] == 0

    full = model(**batch, use_cache=False).loss
    summed, _ = chunked_label_loss(model, batch, num_items_in_batch=torch.tensor(2 * labelled), chunk_tokens=16)
    assert summed.item() == pytest.approx(full.item() / 2, rel=1e-6)
    with torch.no_grad():  # evaluation
        assert chunked_label_loss(model, batch, chunk_tokens=16)[0].item() == pytest.approx(full.item(), rel=1e-6)

    unlabelled = {**batch, "labels": torch.full_like(batch["labels"], -100)}
    zero, grads = _loss_and_grads(model, lambda: chunked_label_loss(model, unlabelled, chunk_tokens=16)[0])
    assert zero.item() == 0.0 and all(float(g.abs().max()) == 0.0 for g in grads.values())
    assert len(grads) == len(list(model.parameters()))


def test_chunked_label_loss_with_soft_capping_and_peft_output_layers():
    """Gemma's final_logit_softcapping, and output layers that PEFT wraps: trained rows of new
    tokens on a tied head (as gemma-3-270m trains), LoRA on an untied head."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from pipeline.train import trainer

    batch = _packed_batch()
    torch.manual_seed(0)
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                               num_attention_heads=2, num_key_value_heads=1, head_dim=32, pad_token_id=0,
                                               final_logit_softcapping=5.0, attn_implementation="sdpa"))
    gemma = get_peft_model(gemma, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], trainable_token_indices=[296, 299],
                                             init_lora_weights=False)).train()
    trainer.use_sparse_trainable_tokens()
    try:
        _assert_same_loss_and_grads(gemma, batch, chunk_tokens=16)
    finally:
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

        TrainableTokensLayer.forward_adapters = trainer._PEFT_TRAINABLE_TOKENS_FORWARD
        trainer._PEFT_TRAINABLE_TOKENS_FORWARD = None
    llama = get_peft_model(_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False))
    _assert_same_loss_and_grads(llama.train(), batch, chunk_tokens=16)


@pytest.mark.parametrize("tied", [True, False])
def test_trained_new_tokens_give_peft_s_loss_and_gradients_without_the_dense_copy(tied):
    """train.lora.train_new_tokens: PEFT trainable tokens on the embedding and the output layer,
    tied (one set of rows) or untied (each its own). Our sparse forward
    (pipeline.train.trainer.sparse_trainable_tokens_forward) gives PEFT's own loss and gradients; the new
    tokens' rows get gradients (untied: input and output rows both), the frozen matrix none."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.train import trainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                                         tie_word_embeddings=tied)).double()  # float64: the two sum in different orders
    new = [296, 297, 298, 299]
    indices = trainer.trainable_token_indices(model, new)
    assert indices == (new if tied else {"model.embed_tokens": new, "lm_head": new})
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], trainable_token_indices=indices,
                                             init_lora_weights=False))
    with torch.no_grad():  # trained rows that differ from the originals
        for module in model.modules():
            if isinstance(module, TrainableTokensLayer) and not module.tied_adapter:
                module.trainable_tokens_delta["default"].add_(torch.randn(len(new), 64, dtype=torch.float64))
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 300, (2, 40), generator=gen)
    ids[0, 5], ids[1, 7] = 297, 299  # new tokens in the input, and as labels
    batch = {"input_ids": ids, "labels": ids.clone()}

    def run():
        model.zero_grad()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    original = TrainableTokensLayer.forward_adapters
    want_loss, want = run()
    trainer.use_sparse_trainable_tokens()
    try:
        assert TrainableTokensLayer.forward_adapters is trainer.sparse_trainable_tokens_forward
        got_loss, got = run()
    finally:
        TrainableTokensLayer.forward_adapters = original
        trainer._PEFT_TRAINABLE_TOKENS_FORWARD = None
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    assert sorted(got) == sorted(want)
    trained = sorted(n.split(".trainable_tokens_delta")[0].rsplit(".", 2)[-2]
                     for n in got if "trainable_tokens_delta" in n)
    assert trained == (["embed_tokens"] if tied else ["embed_tokens", "lm_head"])
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def _padded_untied_base(src):
    """A pretrained-like checkpoint whose vocabulary is padded and whose output layer is untied,
    as Qwen2.5-7B's and DeepSeek-R1-Distill-Qwen-7B's: 64 tokens (word-level) in 80 rows."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    words = ["<unk>", "<|endoftext|>", *(f"w{i}" for i in range(62))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>").save_pretrained(src)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=80, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))
    model.save_pretrained(src)
    return len(words), 80


def test_added_tokens_in_a_padded_untied_vocabulary_start_at_the_mean_and_train_both_rows(tmp_path):
    """base_model adds chat and tag tokens to a padded vocabulary: their ids land in padding rows,
    which get the exact mean of the real tokens' rows (padding left out of it), in the embedding
    and in the untied output layer, without growing the matrices. One training step (the real
    trainer: trainable token rows, sparse forward, chunked loss) then changes the input and the
    output rows of a new token, and nothing else of either matrix."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.config.params import load_params
    from pipeline.models.base import build_hf, exact_row_mean
    from pipeline.models.loading import load_tuned, new_token_ids
    from pipeline.train.trainer import build_trainer

    tokens, rows = _padded_untied_base(tmp_path / "hf")
    pretrained = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    build_hf(str(tmp_path / "hf"), tmp_path / "base")
    new = new_token_ids(tmp_path / "base")
    assert new == list(range(tokens, tokens + len(new))) and tokens + len(new) < rows
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    for name in ("embed_tokens", "lm_head"):
        was = (pretrained.get_input_embeddings() if name == "embed_tokens" else pretrained.get_output_embeddings()).weight
        now = (base.get_input_embeddings() if name == "embed_tokens" else base.get_output_embeddings()).weight
        assert now.shape[0] == rows
        assert all(torch.equal(now[i], exact_row_mean(was[:tokens])) for i in new), name
        keep = [i for i in range(rows) if i not in new]
        assert torch.equal(now[keep], was[keep]), name
    assert not torch.equal(exact_row_mean(was[:tokens]), exact_row_mean(was))  # the padding is not in the mean

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base")
    im_start, im_end = tokenizer.convert_tokens_to_ids([chat_format.IM_START, chat_format.IM_END])
    ids = [im_start, 5, 6, 7, im_end, im_start, 8, 9, 10, 11, im_end]
    examples = [{"input_ids": ids, "labels": [-100] * 6 + ids[6:]}] * 4
    cfg = load_params(compose_params(tmp_path / "ws")).train
    cfg = dataclasses.replace(cfg, max_steps=1, batch_size=4, grad_accum=1, warmup_ratio=0.0, eval_steps=1,
                              select_best=False, early_stopping=dataclasses.replace(cfg.early_stopping, patience=0))
    trainer = build_trainer(base, tokenizer, examples, examples[:1], cfg, output_dir=tmp_path / "ckpt")
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    tuned = load_tuned(tmp_path / "adapter", tmp_path / "base")
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    for layer in ("get_input_embeddings", "get_output_embeddings"):
        before, after = getattr(trained, layer)().weight, getattr(tuned, layer)().weight
        changed = sorted(int(i) for i in (before != after).any(dim=1).nonzero())
        assert im_end in changed and set(changed) <= set(new), (layer, changed)


def test_first_fit_decreasing_respects_capacity():
    from pipeline.train.packing import first_fit_decreasing

    lengths = [90, 10, 60, 40, 30, 70, 5, 100]
    bins = first_fit_decreasing(lengths, 100)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 100 for b in bins)
    assert len(bins) == 5  # 405 tokens: at least 5 bins of 100


def test_effective_batch_is_kept_across_process_counts(tmp_path):
    from pipeline.config.params import load_params
    from pipeline.train.launch import batch_layout

    cfg = load_params(compose_params(tmp_path, "train.batch_size=8", "train.grad_accum=4")).train
    for nproc in (1, 2, 4, 8, 16, 32):
        micro, accum = batch_layout(cfg, nproc)
        assert micro * accum * nproc == 32 and micro <= 8
    assert batch_layout(cfg, 2) == (8, 2)
    cfg = load_params(compose_params(tmp_path, "train.batch_size=6", "train.grad_accum=1")).train
    assert batch_layout(cfg, 2) == (3, 1)
    with pytest.raises(SystemExit, match="cannot be split evenly across 4 processes"):
        batch_layout(cfg, 4)


def test_checkpoints_resume_only_the_same_interrupted_run(tmp_path):
    from pipeline.train.checkpoints import checkpoint_to_resume, finish_checkpoints

    ckpt = tmp_path / "checkpoints"
    assert checkpoint_to_resume("A", True, ckpt) is None  # nothing there: a fresh run
    for step in (4, 8):
        (ckpt / f"checkpoint-{step}").mkdir()
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (ckpt / "checkpoint-12").mkdir()  # cut short by the kill: no trainer_state.json yet
    assert checkpoint_to_resume("A", True, ckpt) == str(ckpt / "checkpoint-8")
    assert not (ckpt / "checkpoint-12").exists()
    assert checkpoint_to_resume("B", True, ckpt) is None  # another config or data: start over
    assert not list(ckpt.glob("checkpoint-*"))
    (ckpt / "checkpoint-4").mkdir()
    (ckpt / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert checkpoint_to_resume("B", False, ckpt) is None  # resume off
    (ckpt / "checkpoint-4").mkdir()
    (ckpt / "checkpoint-4" / "trainer_state.json").write_text("{}")
    finish_checkpoints(ckpt)
    assert json.loads((ckpt / "run.json").read_text())["status"] == "finished"
    assert checkpoint_to_resume("B", True, ckpt) is None  # a finished run is not resumed


@pytest.fixture(scope="module")
def train_inputs(crawled_workspace, tmp_path_factory):
    """models/base (the tiny profile's) and data/sft with plain rows of the crawled questions."""
    from pipeline.config.params import load_params
    from pipeline.data.records import load_split
    from pipeline.models.base import build

    src = tmp_path_factory.mktemp("train_inputs")
    params = load_params(crawled_workspace / "params.yaml")
    build(params.model, params.seed, params.chat.system_prompt, src / "models/base",
          crawled_workspace / "data/dedup/split.jsonl")
    (src / "data/sft").mkdir(parents=True)
    for split, count in (("train", 192), ("val", 32)):
        records = load_split(split, crawled_workspace / "data/dedup/split.jsonl")[:count]
        with (src / f"data/sft/{split}.jsonl").open("w", encoding="utf-8") as f:
            for rec in records:
                row = {"id": rec["id"], "source_ids": [rec["id"]], "task": "plain",
                       "messages": chat_format.record_to_messages(rec, params.chat.system_prompt)}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    # what evaluate reads besides: the split, the exam sets, and test search rows with labels
    (src / "data/dedup").mkdir(parents=True)
    shutil.copy(crawled_workspace / "data/dedup/split.jsonl", src / "data/dedup/split.jsonl")
    shutil.copytree(crawled_workspace / "evalsets", src / "evalsets")
    with (src / "data/sft/test.jsonl").open("w", encoding="utf-8") as f:
        for n, rec in enumerate(load_split("test", crawled_workspace / "data/dedup/split.jsonl")[:4]):
            messages = chat_format.record_to_messages(rec, params.chat.system_prompt)
            facts = {"needs_search": n % 2 == 0, "query": rec["question"][:40]}
            row = {"id": f"search/{rec['id']}", "source_ids": [rec["id"]], "urls": [rec["url"]], "task": "search",
                   "messages": messages, "tools": [SEARCH_TOOL], "search": facts}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return src


def _workspace(inputs, dest, *overrides):
    shutil.copytree(inputs, dest)
    compose_params(dest, *SHORT_RUN, *overrides)
    return dest


def _train(ws, nproc=1, check=True):
    env = {**stage_env(), "DISTILLERY_NPROC": str(nproc)}
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.train"], cwd=ws, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        pytest.fail(f"train exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def _adapter(ws):
    from safetensors.torch import load_file

    return load_file(ws / "models/adapter/adapter_model.safetensors")


def _metrics(ws):
    return json.loads((ws / "metrics/train.json").read_text())


def test_sigkill_resume_and_two_processes(train_inputs, tmp_path):
    """Killed at a checkpoint and rerun, train ends with the adapter of an uninterrupted run
    (max abs difference below 1e-6); two processes, DDP or FSDP, reach the eval loss of one
    within 5%."""
    whole = _workspace(train_inputs, tmp_path / "whole")
    _train(whole)
    reference = _metrics(whole)
    assert reference["steps"] == 24 and reference["resumed_from_step"] == 0
    assert reference["tokens_per_s"] > 0 and reference["peak_rss_mib"] > 0 and reference["trainable_params"] > 0
    assert json.loads((whole / "models/checkpoints/run.json").read_text())["status"] == "finished"
    assert [p.name for p in (whole / "models/checkpoints").iterdir()] == ["run.json"]

    killed = _workspace(train_inputs, tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages.train"], cwd=killed, env=stage_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "models/checkpoints/checkpoint-8/trainer_state.json"
    while not marker.exists() and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((killed / "models/checkpoints/run.json").read_text())["status"] == "running"
    out = _train(killed)
    assert "resuming the interrupted run from models/checkpoints/checkpoint-" in out
    resumed = _metrics(killed)
    assert resumed["resumed_from_step"] >= 8 and resumed["steps"] == 24
    want, got = _adapter(whole), _adapter(killed)
    assert want.keys() == got.keys()
    worst = max(float((want[k] - got[k]).abs().max()) for k in want)
    print(f"resumed vs uninterrupted adapter: max abs difference {worst:.3g}")
    assert worst < 1e-6, worst
    assert resumed["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-6)
    assert resumed["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-6)
    # Byte for byte, config and model card included (PEFT's target_modules order is fixed).
    files = sorted(p.name for p in (whole / "models/adapter").iterdir())
    assert files == sorted(p.name for p in (killed / "models/adapter").iterdir())
    assert all((whole / "models/adapter" / f).read_bytes() == (killed / "models/adapter" / f).read_bytes()
               for f in files)

    # with gradient checkpointing (non-re-entrant) under DDP: re-entrant marks parameters ready twice
    two = _workspace(train_inputs, tmp_path / "two", "train.gradient_checkpointing=true")
    out = _train(two, nproc=2)
    assert "effective batch 8 = 4 per process x 2 process(es) x 1 accumulation step(s)" in out
    pair = _metrics(two)
    assert pair["processes"] == 2 and pair["effective_batch"] == 8 and pair["steps"] == 24
    print(f"eval loss: 1 process {reference['eval_loss']:.4f}, 2 processes {pair['eval_loss']:.4f}")
    assert pair["eval_loss"] == pytest.approx(reference["eval_loss"], rel=0.05)

    # The same two processes as two nodes of one process each (make train GPUS=1 NODES=2), each
    # node with its own copy of the inputs, meeting at node 0's address: the adapter of the
    # two-process run, and only node 0 writes outputs.
    nodes = [_workspace(train_inputs, tmp_path / f"node{rank}") for rank in range(2)]
    port = free_port()
    launches = [subprocess.Popen(
        [sys.executable, "-m", "pipeline.stages.train"], cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**stage_env(), "DISTILLERY_NPROC": "1", "DISTILLERY_NNODES": "2", "DISTILLERY_NODE_RANK": str(rank),
             "DISTILLERY_MASTER_ADDR": "127.0.0.1", "DISTILLERY_MASTER_PORT": str(port)})
        for rank, ws in enumerate(nodes)]
    outs = [proc.communicate(timeout=600)[0] for proc in launches]
    assert [proc.returncode for proc in launches] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "--nnodes=2 --node_rank=1" in outs[1] and not (nodes[1] / "models/adapter").exists()
    assert _metrics(nodes[0])["processes"] == 2 and _metrics(nodes[0])["nodes"] == 2
    pair_adapter, node_adapter = _adapter(two), _adapter(nodes[0])
    worst = max(float((pair_adapter[k] - node_adapter[k]).abs().max()) for k in pair_adapter)
    print(f"2 nodes vs 2 processes on one node: adapter max abs difference {worst:.3g}")
    assert worst < 1e-5, worst

    sharded = _workspace(train_inputs, tmp_path / "fsdp", "train.distributed.strategy=fsdp")
    _train(sharded, nproc=2)
    assert _adapter(sharded).keys() == want.keys()  # gathered, not one shard
    print(f"eval loss: FSDP over 2 processes {_metrics(sharded)['eval_loss']:.4f}")
    assert _metrics(sharded)["eval_loss"] == pytest.approx(reference["eval_loss"], rel=0.05)


def test_qlora_trains_on_cpu_and_merges_onto_the_full_precision_base(train_inputs, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.models.loading import load_tuned

    # two processes (gloo): DDP's reducer over QLoRA with gradient checkpointing is what `make
    # train GPUS=2` runs on nccl, and fails the same way where the checkpointing is re-entrant
    ws = _workspace(train_inputs, tmp_path / "qlora", "train=qlora", "train.max_steps=8",
                    "train.gradient_checkpointing=true")
    out = _train(ws, nproc=2)
    # bitsandbytes' CPU kernels need input widths in multiples of 64: the tiny MLP's 352 is not.
    assert "QLoRA on CPU keeps down_proj in full precision" in out
    metrics = _metrics(ws)
    assert metrics["method"] == "qlora" and metrics["steps"] == 8 and metrics["processes"] == 2
    config = json.loads((ws / "models/adapter/adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"

    merged = load_tuned(ws / "models/adapter", ws / "models/base")
    linears = [m for m in merged.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 for m in linears)
    unmerged = load_tuned(ws / "models/adapter", ws / "models/base", merge=False)
    base = AutoModelForCausalLM.from_pretrained(ws / "models/base", dtype=torch.float32)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250]])
    with torch.no_grad():
        a, b, c = (m(input_ids=ids).logits for m in (merged, unmerged, base))
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-4)  # the adapter did change the model

    # A 4-bit checkpoint as the base is refused, not merged into.
    quantized = tmp_path / "quantized"
    shutil.copytree(ws / "models/base", quantized)
    cfg = json.loads((quantized / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="full-precision base only"):
        load_tuned(ws / "models/adapter", quantized)


def test_early_stopping_ends_with_the_best_checkpoint(train_inputs, tmp_path):
    """With an improvement threshold no step can meet, training stops after the first
    evaluation plus `patience` more, and keeps the checkpoint of lowest eval loss (DoRA, to
    run that path too)."""
    ws = _workspace(train_inputs, tmp_path / "early", "train.early_stopping.patience=2",
                    "train.early_stopping.threshold=10.0", "train.lora.use_dora=true", "train.repeat.plain=2")
    _train(ws)
    metrics = _metrics(ws)
    assert metrics["method"] == "dora"
    # train.repeat: every train row twice per epoch, the val rows once
    assert metrics["train_examples"] == 2 * 192 and metrics["train_examples_by_task"] == {"plain": 2 * 192}
    assert metrics["val_examples"] == 32
    assert metrics["early_stopped"] and metrics["steps"] == 12  # evaluations at 4, 8, 12 of 24
    curve = [float(line.split("\t")[-1]) for line in
             (ws / "reports/train/plots/metrics/eval/loss.tsv").read_text().splitlines()[1:]]
    assert len(curve) == 3 and metrics["eval_loss"] == pytest.approx(min(curve))

    # vLLM cannot load DoRA adapters: evaluate says so and generates with transformers
    compose_params(ws, *SHORT_RUN, "train.early_stopping.patience=2", "train.early_stopping.threshold=10.0",
                   "train.lora.use_dora=true", "train.repeat.plain=2", "eval.max_questions=6", "eval.max_new_tokens=12",
                   "eval.exam_sets=[evalsets/elements_exam.csv]", "eval.general_sets=[]", "eval.mc.framings=[plain]")
    run_stage("pipeline.stages.search_index", ws)  # evaluate runs the search conversations on it
    out = run_stage("pipeline.stages.evaluate", ws).stdout
    assert "vLLM cannot load a DoRA adapter; generating with transformers" in out
    evaluated = json.loads((ws / "metrics/eval.json").read_text())
    assert evaluated["backend"] == "transformers"
    assert evaluated["prompts"] == {"exam:elements_exam": 14, "questions": 6, "tools": 4}
    assert sum(evaluated["tuned"]["tools"]["confusion"].values()) == 4
    # knowledge: every test question with a short answer, cloze-scored and ranked, both models
    know = [json.loads(r) for r in (ws / "reports/eval/knowledge.jsonl").read_text().splitlines()]
    items = evaluated["knowledge"]["items"]
    assert 2 * (items["forward"] + items["reverse"]) == len(know) and items["forward"] > 0  # both ways, both models
    assert {"knowledge.cloze", "knowledge.rank_acc1", "knowledge.mrr"} <= set(evaluated["comparison"])
    assert evaluated["tuned"]["knowledge"]["cloze"]["n"] == evaluated["knowledge"]["power"]["cloze"]["n"]
    rows = (ws / "reports/eval/predictions.jsonl").read_text().splitlines()
    assert len(rows) == 2 * 24 and all(0 < json.loads(r)["new_tokens"] <= 12 for r in rows)


def test_a_text_row_is_trained_on_every_token_and_packs_beside_chat_rows(tiny_tokenizer):
    """A knowledge row (task text): the tokenizer's own BOS policy, the text, the EOS, every token
    labelled; packed beside a chat row, each keeps its own positions and labels."""
    from pipeline.data import chat_format
    from pipeline.data.records import encode_rows
    from pipeline.train.packing import SFTCollator

    text = "Neon has the atomic number 10."
    chat = {"task": "plain", "messages": chat_format.record_to_messages(
        {"question": "What is the atomic number of neon?", "answer": "10", "options": {}}, "You are a careful domain expert.")}
    (t, c), counts = encode_rows(tiny_tokenizer, [{"task": "text", "text": text}, chat], max_len=512)
    assert t["labels"] == t["input_ids"] and t["input_ids"][-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(t["input_ids"][:-1]) == text
    assert counts == {"tokens/text": len(t["input_ids"]), "tokens/plain": len(c["input_ids"])}
    assert any(label == -100 for label in c["labels"])  # the chat row's prompt is not trained
    batch = SFTCollator(tiny_tokenizer.pad_token_id, pack=True, row_len=512)([t, c])
    assert batch["input_ids"].shape[0] == 1
    first, second = (t, c) if len(t["input_ids"]) >= len(c["input_ids"]) else (c, t)
    n = len(first["input_ids"])
    assert batch["position_ids"][0, n].item() == 0  # the second example's positions restart
    assert batch["labels"][0, n].item() == -100 and batch["labels"][0, n + 1:n + len(second["labels"])].tolist() == second["labels"][1:]
