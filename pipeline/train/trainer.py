"""The trainer: TRL's SFTTrainer with LoRA, DoRA or QLoRA (PEFT) on the SFT rows, the loss on
labelled positions only (pipeline.train.loss), packed batches, DVCLive curves, trainable token
rows without PEFT's dense copy, and the run's figures. The stage is pipeline/stages/train.py."""

from __future__ import annotations

import collections
import json
import os
import resource
import shutil
import sys
from pathlib import Path

from pipeline.config import Sections
from pipeline.config.train import TrainConfig
from pipeline.data import chat_format
from pipeline.data.records import encode_rows, load_sft, repeat_rows
from pipeline.models.loading import GRADIENT_CHECKPOINTING_KWARGS, load_base, new_token_ids
from pipeline.paths import ADAPTER_DIR, BASE_DIR, CHECKPOINT_DIR, SFT_DIR, TRAIN_LIVE_DIR
from pipeline.runtime.device import torch_dtype
from pipeline.train.launch import batch_layout
from pipeline.train.packing import SFTCollator


def live_callback(live_dir: Path):
    """A TrainerCallback that sends train and eval loss to DVCLive, keyed by global step.

    Only the main process logs. A resumed run starts a fresh curve at the resumed step (the
    log history before it is in the checkpoint's trainer_state.json). Call `.close()` after
    the final evaluation.
    """
    from dvclive import Live
    from transformers import TrainerCallback

    class DVCLiveLoss(TrainerCallback):
        def __init__(self):
            self.live = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
                for log in state.log_history:  # a resumed run: the curve so far, from the checkpoint
                    self._log(log)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.live is not None and logs:
                self._log({**logs, "step": state.global_step})

        def _log(self, log: dict) -> None:
            self.live.step = log["step"]
            for key, name in (("loss", "train/loss"), ("eval_loss", "eval/loss"), ("learning_rate", "train/lr")):
                if key in log:
                    self.live.log_metric(name, float(log[key]))

        def close(self):
            if self.live is not None:
                self.live.end()
                self.live = None

    return DVCLiveLoss()


def trainer_arguments(cfg: TrainConfig, nproc: int, device: str, output_dir: Path = CHECKPOINT_DIR) -> dict:
    """SFTConfig's arguments for this configuration, process count and device (pipeline.runtime.device's
    choice): the one place they are decided, so each profile's can be checked without a GPU."""
    import torch

    on_gpu = device == "cuda"
    micro_batch, accum = batch_layout(cfg, nproc)
    dtype = torch_dtype(cfg.dtype, device)
    fsdp = nproc > 1 and cfg.distributed.strategy == "fsdp"
    return dict(
        output_dir=str(output_dir),
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a fraction of the total steps
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=micro_batch,
        per_device_eval_batch_size=micro_batch,
        gradient_accumulation_steps=accum,
        gradient_checkpointing=cfg.gradient_checkpointing,
        # re-entrant checkpointing (torch's old default) marks LoRA parameters ready twice under DDP
        gradient_checkpointing_kwargs=dict(GRADIENT_CHECKPOINTING_KWARGS) if cfg.gradient_checkpointing else None,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        save_total_limit=cfg.keep_checkpoints,
        load_best_model_at_end=cfg.select_best,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        include_num_input_tokens_seen="non_padding",  # pad is its own token, never eos
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        max_length=None,  # truncation already done (and counted) by encode_rows
        use_cpu=not on_gpu,
        # Mixed precision only on a GPU; on a CPU without bf16 units autocast makes each step ~10x slower.
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        ddp_backend=("nccl" if on_gpu else "gloo") if nproc > 1 else None,
        # Every trainable parameter (LoRA matrices, trained token rows) takes part in every step:
        # the Trainer's default for a PeftModel (True) costs a graph traversal per step and, with
        # gradient checkpointing, fails as "marked ready twice".
        ddp_find_unused_parameters=False if nproc > 1 else None,
        # FSDP2, full sharding, one unit per decoder layer
        fsdp=fsdp,
        fsdp_config={"fsdp_version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                     "reshard_after_forward": True} if fsdp else None,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def build_trainer(model, tokenizer, train_ex: list[dict], val_ex: list[dict], cfg: TrainConfig,
                  output_dir: Path = CHECKPOINT_DIR, callbacks: list | None = None, nproc: int = 1,
                  device: str = "cpu"):
    """TRL's SFTTrainer with a LoRA adapter on `model`, over our pre-tokenised examples.

    The examples carry `labels` built by pipeline.chat.encode and pipeline.train.packing's collator
    keeps them, so the loss is exactly the assistant tokens and their end-of-turn tokens.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig, SFTTrainer

    source = getattr(model, "name_or_path", "")  # the directory the base was loaded from
    new_tokens = new_token_ids(Path(source)) if cfg.lora.train_new_tokens and source else []
    if new_tokens:
        use_sparse_trainable_tokens()
    args = SFTConfig(**trainer_arguments(cfg, nproc, device, output_dir))
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        use_dora=cfg.lora.use_dora,
        task_type="CAUSAL_LM",
        trainable_token_indices=trainable_token_indices(model, new_tokens),
    )
    callbacks = list(callbacks or [])
    if cfg.early_stopping.patience > 0:
        callbacks.append(EarlyStoppingCallback(cfg.early_stopping.patience, cfg.early_stopping.threshold))
    trainer_cls = _label_logits_trainer(SFTTrainer)
    trainer_cls.new_tokens_lr = cfg.lora.new_tokens_lr if new_tokens else None
    trainer_cls.loss_chunk_tokens = cfg.loss_chunk_tokens
    return trainer_cls(
        model=model,
        args=args,
        data_collator=SFTCollator(tokenizer.pad_token_id, pack=cfg.packing, row_len=cfg.max_seq_len),
        train_dataset=Dataset.from_list(train_ex),
        eval_dataset=Dataset.from_list(val_ex),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )


def trainable_token_indices(model, ids: list[int]) -> list[int] | dict[str, list[int]] | None:
    """PEFT's trainable_token_indices for the rows of the tokens base_model added: the
    embedding's, which a tied output layer shares (PEFT ties its rows to them), and an untied
    output layer's own rows as well (gpu-qlora-7b's DeepSeek-R1-Distill-Qwen-7B): the logits of
    the new tokens come from there, and a model whose output row for <|im_end|> never trains may
    never learn to stop."""
    if not ids:
        return None
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is embed.weight:
        return ids
    names = {module: name for name, module in model.named_modules()}
    return {names[embed]: ids, names[head]: ids}


def sparse_trainable_tokens_forward(layer, x, active_adapters, *args, **kwargs):
    """PEFT's trainable-tokens forward without the dense copy of the weight matrix.

    PEFT builds the whole embedding (or output) matrix with the trained rows copied in
    on every call, so autograd also computes a dense gradient for it: for gemma-3-270m's
    262k x 640 matrix that made a training step ~10x slower than LoRA alone. Here the frozen
    matrix is used as is and only the trained rows are swapped in (embedding: the rows looked
    up for those ids; output layer: the logits of those ids), which is the same function with
    gradients for the trained rows only. Merged or disabled adapters, several active ones, and
    layers other than Embedding / Linear go to PEFT's own code."""
    import torch
    import torch.nn.functional as F

    base = layer.base_layer
    if (layer.disable_adapters or not active_adapters or layer.merged or len(active_adapters) != 1
            or not isinstance(base, (torch.nn.Embedding, torch.nn.Linear))):
        return _PEFT_TRAINABLE_TOKENS_FORWARD(layer, x, active_adapters, *args, **kwargs)
    name = active_adapters[0]
    index = torch.tensor(layer.token_indices[name], device=base.weight.device)
    rows = layer.trainable_tokens_delta[name].to(base.weight)
    if isinstance(base, torch.nn.Embedding):
        result = F.embedding(x, base.weight, padding_idx=base.padding_idx, max_norm=base.max_norm,
                             norm_type=base.norm_type, scale_grad_by_freq=base.scale_grad_by_freq, sparse=base.sparse)
        lookup = torch.full((base.weight.shape[0],), -1, dtype=torch.long, device=x.device)
        lookup[index] = torch.arange(len(index), device=x.device)
        slot = lookup[x]
        hit = slot >= 0
        if bool(hit.any()):
            result = result.masked_scatter(hit.unsqueeze(-1), rows[slot[hit]].to(result.dtype))
        scale = layer._get_embed_scale()
        return result * scale.to(result.dtype) if scale is not None else result
    result = F.linear(x, base.weight)  # an output layer, tied or not: the trained rows are those ids' logits
    return result.index_copy(-1, index, F.linear(x, rows).to(result.dtype))


_PEFT_TRAINABLE_TOKENS_FORWARD = None


def use_sparse_trainable_tokens() -> None:
    """Install sparse_trainable_tokens_forward on PEFT's TrainableTokensLayer (idempotent)."""
    global _PEFT_TRAINABLE_TOKENS_FORWARD
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    if _PEFT_TRAINABLE_TOKENS_FORWARD is None:
        _PEFT_TRAINABLE_TOKENS_FORWARD = TrainableTokensLayer.forward_adapters
        TrainableTokensLayer.forward_adapters = sparse_trainable_tokens_forward


def _label_logits_trainer(base):
    class LabelLogitsSFTTrainer(base):
        """TRL's SFTTrainer whose loss computes the output layer at labelled positions only, a
        chunk of them at a time (pipeline.train.loss.chunked_label_loss); TRL's per-token accuracy and
        entropy logs, which need every position's logits, are not computed."""

        new_tokens_lr: float | None = None
        loss_chunk_tokens: int

        def create_optimizer(self):
            """The Trainer's optimizer, with the trained token rows in a group of their own at
            train.lora.new_tokens_lr (the schedule scales both groups alike)."""
            if self.optimizer is None and self.new_tokens_lr is not None:
                from transformers import Trainer

                named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
                tokens = [p for n, p in named if "trainable_tokens_delta" in n]
                if tokens:
                    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
                    groups = [{"params": [p for n, p in named if "trainable_tokens_delta" not in n],
                               "weight_decay": self.args.weight_decay},
                              {"params": tokens, "weight_decay": 0.0, "lr": self.new_tokens_lr}]
                    self.optimizer = optimizer_cls(groups, **kwargs)
            return super().create_optimizer()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # As Trainer.compute_loss: normalised by num_items_in_batch only where the Trainer
            # expects it (it then skips its own division by the accumulation steps), and scaled
            # by the number of processes when tokens are averaged across them.
            from pipeline.train.loss import chunked_label_loss

            if not self.model_accepts_loss_kwargs:
                num_items_in_batch = None
            loss, outputs = chunked_label_loss(model, inputs, num_items_in_batch, self.loss_chunk_tokens)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    return LabelLogitsSFTTrainer


def run_train_loss(log_history: list[dict]) -> float | None:
    """Mean training loss of the whole run from the logged windows (each weighted by its
    steps). The log history travels with the checkpoint, so a resumed run reports what an
    uninterrupted one would (the Trainer's own figure covers the resumed part only)."""
    total, previous = 0.0, 0
    for log in log_history:
        if "loss" in log:
            total += log["loss"] * (log["step"] - previous)
            previous = log["step"]
    return total / previous if previous else None


def save_adapter(trainer, tokenizer, adapter_dir: Path = ADAPTER_DIR) -> None:
    """The adapter with its tokenizer and chat template. PEFT writes target_modules from a set,
    in an order that changes with every process (string hashing is randomised): sorted here, so
    that the same training gives the same bytes."""
    shutil.rmtree(adapter_dir, ignore_errors=True)
    trainer.save_model(str(adapter_dir))
    chat_format.save_tokenizer(tokenizer, str(adapter_dir))
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def peak_memory(trainer) -> dict:
    """Peak resident memory of the busiest process, and peak GPU memory on a GPU, in MiB."""
    import torch

    figures = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]  # Linux: KiB
    if trainer.args.device.type == "cuda":
        figures.append(torch.cuda.max_memory_allocated() / 2**20)
    gathered = trainer.accelerator.gather(torch.tensor([figures], device=trainer.args.device)).view(-1, len(figures))
    peak = gathered.max(dim=0).values.tolist()
    return {"peak_rss_mib": round(peak[0], 1), **({"peak_gpu_mib": round(peak[1], 1)} if len(peak) > 1 else {})}


def train(params: Sections, nproc: int, resume_from: str | None, device: str = "cpu") -> dict:
    from transformers import AutoTokenizer

    cfg = params.train
    tokenizer = AutoTokenizer.from_pretrained(BASE_DIR)
    model = load_base(cfg, device=device)
    train_rows, val_rows = repeat_rows(load_sft("train"), cfg.repeat), load_sft("val")
    train_ex, train_counts = encode_rows(tokenizer, train_rows, cfg.max_seq_len)
    val_ex, val_counts = encode_rows(tokenizer, val_rows, cfg.max_seq_len)
    counts = train_counts + val_counts
    dropped = {key.split("/")[1]: n for key, n in sorted(counts.items()) if key.startswith("no_labels/")}
    if dropped and int(os.environ.get("RANK", "0")) == 0:
        print(f"train: warning: rows whose prompt alone fills train.max_seq_len ({cfg.max_seq_len} tokens) "
              f"have nothing to learn and were dropped: {dropped}; raise train.max_seq_len to keep them",
              flush=True)
    if not train_ex or not val_ex:
        sys.exit(f"error: {SFT_DIR} has {len(train_ex)} train and {len(val_ex)} val rows; both must be non-empty")

    live = live_callback(TRAIN_LIVE_DIR)
    trainer = build_trainer(model, tokenizer, train_ex, val_ex, cfg, callbacks=[live], nproc=nproc, device=device)
    micro_batch, accum = trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps
    if trainer.is_world_process_zero():
        print(f"train: effective batch {micro_batch * accum * nproc} = {micro_batch} per process x {nproc} "
              f"process(es) x {accum} accumulation step(s) (train.batch_size {cfg.batch_size} x "
              f"train.grad_accum {cfg.grad_accum})", flush=True)
    tokens_before = 0
    if resume_from:
        tokens_before = json.loads((Path(resume_from) / "trainer_state.json").read_text())["num_input_tokens_seen"]
    result = trainer.train(resume_from_checkpoint=resume_from)
    state = trainer.state
    # The eval loss of the weights we keep: the best checkpoint's when select_best, else the last
    # step's (evaluated at the end of training already, or measured now).
    last = [log["eval_loss"] for log in state.log_history if "eval_loss" in log and log["step"] == state.global_step]
    if cfg.select_best and state.best_metric is not None:
        eval_loss = state.best_metric
    else:
        eval_loss = last[-1] if last else trainer.evaluate()["eval_loss"]
    live.close()
    trainable, total = trainer.model.get_nb_trainable_parameters()
    memory = peak_memory(trainer)
    if trainer.is_world_process_zero():
        save_adapter(trainer, tokenizer)
    runtime = result.metrics["train_runtime"]
    return {
        "train_loss": run_train_loss(state.log_history) or result.training_loss,
        "eval_loss": eval_loss,
        "best_step": int(state.best_model_checkpoint.rsplit("-", 1)[1]) if state.best_model_checkpoint else state.global_step,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "early_stopped": state.global_step < state.max_steps,
        "resumed_from_step": int(resume_from.rsplit("-", 1)[1]) if resume_from else 0,
        "train_examples": len(train_ex),
        "val_examples": len(val_ex),
        "train_examples_by_task": dict(sorted(collections.Counter(r["task"] for r in train_rows).items())),
        # per kind: chat rows (plain, think, search, qgen, conversation) and text rows, repeats included
        "train_tokens_by_task": {k.split("/")[1]: n for k, n in sorted(train_counts.items()) if k.startswith("tokens/")},
        "truncated": {key.split("/")[1]: n for key, n in sorted(counts.items()) if key.startswith("truncated/")},
        "dropped_without_labels": dropped,
        "trainable_params": trainable,
        "total_params": total,
        "method": "qlora" if cfg.qlora.enabled else ("dora" if cfg.lora.use_dora else "lora"),
        "packing": cfg.packing,
        "processes": nproc,
        "micro_batch": micro_batch,
        "grad_accum_steps": accum,
        "effective_batch": micro_batch * accum * nproc,
        "tokens_seen": state.num_input_tokens_seen,
        "tokens_per_s": round((state.num_input_tokens_seen - tokens_before) / runtime, 1),
        "train_runtime_s": runtime,
        **memory,
    }
