"""Stage train: LoRA, DoRA or QLoRA fine-tuning of models/base on data/sft with TRL's SFTTrainer.

It writes the adapter, with the tokenizer and chat template it was trained with, to models/adapter. Batches are packed
without attention across rows, and a checkpoint at every evaluation lets a killed run continue where it stopped; it
runs as one process or several, on one machine or several.

    python -m pipeline.train                       # reads params.yaml (dvc repro train)
    DISTILLERY_NPROC=2 python -m pipeline.train    # 2 processes under torchrun (make train GPUS=2)
    python -m pipeline.train --plan                # the GPU memory it needs, estimated, nothing loaded

Guide: docs/stages/train.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline.config import Device, sections_or_exit
from pipeline.config.chat import ChatConfig
from pipeline.config.model import ModelConfig
from pipeline.config.train import TrainConfig
from pipeline.paths import ADAPTER_DIR, TRAIN_METRICS
from pipeline.runtime.device import gpu_count
from pipeline.runtime.device import require as require_device
from pipeline.train.checkpoints import checkpoint_to_resume, finish_checkpoints, run_fingerprint, shared_checkpoint
from pipeline.train.launch import Launch, batch_layout, relaunch_distributed
from pipeline.train.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description="Stage train (params.yaml).")
    parser.add_argument("--plan", action="store_true",
                        help="print the run's GPU memory estimate (pipeline.train.memory_plan) without loading the model")
    plan_only = parser.parse_args().plan
    params = sections_or_exit(seed=int, profile=str, device=Device, chat=ChatConfig, model=ModelConfig, train=TrainConfig)
    launch = Launch.from_env()
    if plan_only:
        from pipeline.train import memory_plan

        print(memory_plan.render(memory_plan.plan(params, batch_layout(params.train, launch.world)[0])))
        return
    device = require_device(params.device, "train")
    gpus = gpu_count(device)
    if device == "cuda" and launch.nproc > gpus:
        sys.exit(f"error: train: {launch.nproc} processes per node (GPUS={launch.nproc}) on a machine whose torch "
                 f"sees {gpus} GPU(s); set GPUS to at most {gpus} (CUDA_VISIBLE_DEVICES limits what torch sees)")
    if "LOCAL_RANK" not in os.environ:
        # The launching process of node 0 owns models/checkpoints: it decides resume or a fresh
        # start once. Other nodes resume only from a checkpoint folder they share with it.
        fingerprint = run_fingerprint(params.train, launch.world)
        if launch.node_rank == 0:
            resume_from = checkpoint_to_resume(fingerprint, params.train.resume)
        else:
            resume_from = shared_checkpoint(fingerprint, params.train.resume)
        os.environ["DISTILLERY_RESUME_FROM"] = resume_from or ""
        if launch.world > 1:
            relaunch_distributed(launch)
    metrics = train(params, launch.world, os.environ.get("DISTILLERY_RESUME_FROM") or None, device)
    if launch.nnodes > 1:
        metrics["nodes"] = launch.nnodes
    if int(os.environ.get("RANK", "0")) == 0:
        finish_checkpoints()
        TRAIN_METRICS.parent.mkdir(parents=True, exist_ok=True)
        TRAIN_METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        print(f"train: eval loss {metrics['eval_loss']:.4f} after {metrics['steps']} steps, "
              f"{metrics['tokens_per_s']:.0f} tokens/s -> {ADAPTER_DIR}")
    if launch.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            # every rank past its last collective, then the process group closed: left to the
            # interpreter's exit, gloo's threads can abort a rank ("terminate called without an
            # active exception", exit -6) after a finished run, and torchrun then fails the stage
            dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
