"""Stage train: LoRA fine-tuning of models/base on the synthesised SFT rows (data/sft:
plain, think, search and qgen conversations of the train split; val for eval loss) with
TRL's SFTTrainer.

Conversations are tokenised by pipeline.chat (the one template); the loss covers assistant
tokens and their end-of-turn token only. The adapter, the tokenizer and the chat template
are saved together in models/adapter; DVCLive writes the loss curves to reports/train/ and
the run's figures go to metrics/train.json.

    python -m pipeline.train                       # reads params.yaml (dvc repro train)
    DISTILLERY_NPROC=2 python -m pipeline.train    # 2 processes under torchrun (make train GPUS=2)
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline import chat
from pipeline.config import Params, TrainConfig, load_or_exit

SPLIT = Path("data/dedup/split.jsonl")
SFT_DIR = Path("data/sft")
BASE_DIR = Path("models/base")
ADAPTER_DIR = Path("models/adapter")
CHECKPOINT_DIR = Path("models/checkpoints")
LIVE_DIR = Path("reports/train")
METRICS = Path("metrics/train.json")


def load_split(split: str, split_path: Path = SPLIT) -> list[dict]:
    """The question records (mcq, qa) of one split; document sections feed search, not SFT."""
    with split_path.open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if r["split"] == split and r["kind"] in ("mcq", "qa")]


def load_sft(split: str, sft_dir: Path = SFT_DIR) -> list[dict]:
    """The valid SFT rows of one split (train or val), as the synth stage wrote them."""
    path = sft_dir / f"{split}.jsonl"
    if not path.exists():
        sys.exit(f"error: no {path} (run the synth stage first: dvc repro synth)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def encode_rows(tokenizer, rows: list[dict], max_len: int) -> tuple[list[dict], int]:
    """Tokenised SFT rows (messages with their declared tools) and how many were truncated."""
    examples, truncated = [], 0
    for row in rows:
        enc = chat.encode(tokenizer, row["messages"], tools=row.get("tools") or None, max_len=max_len)
        truncated += enc.pop("truncated")
        examples.append(enc)
    return examples, truncated


def encode_records(tokenizer, records: list[dict], system_prompt: str, max_len: int) -> tuple[list[dict], int]:
    """Tokenised examples (input_ids, labels) and how many were truncated."""
    examples, truncated = [], 0
    for rec in records:
        enc = chat.encode(tokenizer, chat.record_to_messages(rec, system_prompt), max_len=max_len)
        truncated += enc.pop("truncated")
        examples.append(enc)
    return examples, truncated


def relaunch_distributed(nproc: int) -> None:
    """Re-run this stage under torchrun with `nproc` processes (gloo on CPU, nccl on GPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "pipeline.train"]
    print(f"train: launching {nproc} processes: {' '.join(cmd)}", flush=True)
    sys.exit(subprocess.call(cmd))


def live_callback(live_dir: Path):
    """A TrainerCallback that sends train and eval loss to DVCLive, keyed by global step.

    Only the main process logs. Call `.close()` after the final evaluation.
    """
    from dvclive import Live
    from transformers import TrainerCallback

    class DVCLiveLoss(TrainerCallback):
        def __init__(self):
            self.live = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.live is None or not logs:
                return
            self.live.step = state.global_step
            for key, name in (("loss", "train/loss"), ("eval_loss", "eval/loss"), ("learning_rate", "train/lr")):
                if key in logs:
                    self.live.log_metric(name, float(logs[key]))

        def close(self):
            if self.live is not None:
                self.live.end()
                self.live = None

    return DVCLiveLoss()


def build_trainer(model, tokenizer, train_ex: list[dict], val_ex: list[dict], cfg: TrainConfig,
                  output_dir: Path = CHECKPOINT_DIR, callbacks: list | None = None):
    """TRL's SFTTrainer with a LoRA adapter on `model`, over our pre-tokenised examples.

    The examples carry `labels` built by pipeline.chat.encode; SFTTrainer keeps a dataset's
    own labels and its collator pads them with -100, so the loss is exactly the assistant
    tokens and their end-of-turn tokens.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    on_gpu = torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    args = SFTConfig(
        output_dir=str(output_dir),
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a fraction of the total steps
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        max_length=None,  # truncation already done (and counted) by encode_records
        use_cpu=not on_gpu,
        # TRL defaults to bf16; on a CPU without bf16 units autocast makes each step ~10x slower.
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        ddp_backend="gloo" if distributed and not on_gpu else None,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_ex),
        eval_dataset=Dataset.from_list(val_ex),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )


def train(params: Params) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = params.train
    tokenizer = AutoTokenizer.from_pretrained(BASE_DIR)
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
    train_rows, val_rows = load_sft("train"), load_sft("val")
    train_ex, train_trunc = encode_rows(tokenizer, train_rows, cfg.max_seq_len)
    val_ex, val_trunc = encode_rows(tokenizer, val_rows, cfg.max_seq_len)
    if not train_ex or not val_ex:
        sys.exit(f"error: {SFT_DIR} has {len(train_ex)} train and {len(val_ex)} val rows; both must be non-empty")

    live = live_callback(LIVE_DIR)
    trainer = build_trainer(model, tokenizer, train_ex, val_ex, cfg, callbacks=[live])
    result = trainer.train()
    # The final eval loss: logged at the last step already, or measured now (and logged).
    last = [log for log in trainer.state.log_history if "eval_loss" in log and log["step"] == result.global_step]
    eval_loss = last[-1]["eval_loss"] if last else trainer.evaluate()["eval_loss"]
    live.close()
    trainable, total = trainer.model.get_nb_trainable_parameters()
    if trainer.is_world_process_zero():
        shutil.rmtree(ADAPTER_DIR, ignore_errors=True)
        trainer.save_model(str(ADAPTER_DIR))
        tokenizer.save_pretrained(str(ADAPTER_DIR))
        shutil.rmtree(CHECKPOINT_DIR, ignore_errors=True)
    return {
        "train_loss": result.training_loss,
        "eval_loss": eval_loss,
        "steps": result.global_step,
        "train_examples": len(train_ex),
        "val_examples": len(val_ex),
        "train_examples_by_task": dict(sorted(collections.Counter(r["task"] for r in train_rows).items())),
        "truncated": train_trunc + val_trunc,
        "trainable_params": trainable,
        "total_params": total,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "train_runtime_s": result.metrics["train_runtime"],
    }


def main() -> None:
    params = load_or_exit()
    nproc = int(os.environ.get("DISTILLERY_NPROC", "1"))
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        relaunch_distributed(nproc)
    metrics = train(params)
    if int(os.environ.get("RANK", "0")) == 0:
        METRICS.parent.mkdir(parents=True, exist_ok=True)
        METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        print(f"train: eval loss {metrics['eval_loss']:.4f} after {metrics['steps']} steps -> {ADAPTER_DIR}")


if __name__ == "__main__":
    main()
