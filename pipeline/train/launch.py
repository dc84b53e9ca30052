"""How a training run is laid out over processes and nodes: the batch per process and the
accumulation steps (batch_layout), and the torchrun relaunch for several processes (Launch, set
by make train GPUS=N NODES=M)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from pipeline.config.train import TrainConfig


def batch_layout(cfg: TrainConfig, nproc: int) -> tuple[int, int]:
    """(micro-batch per process, accumulation steps) keeping the effective batch
    cfg.batch_size x cfg.grad_accum for `nproc` processes, with the largest micro-batch that
    does not exceed cfg.batch_size."""
    effective = cfg.batch_size * cfg.grad_accum
    for accum in range(1, effective + 1):
        if effective % (accum * nproc) == 0 and effective // (accum * nproc) <= cfg.batch_size:
            return effective // (accum * nproc), accum
    sys.exit(f"error: params.yaml: train.batch_size x train.grad_accum = {effective} cannot be split "
             f"evenly across {nproc} processes; make it a multiple of {nproc}")


@dataclasses.dataclass(frozen=True)
class Launch:
    """Processes per node and the nodes of a run (DISTILLERY_* environment, set by make train)."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @classmethod
    def from_env(cls) -> Launch:
        env = os.environ
        launch = cls(int(env.get("DISTILLERY_NPROC", "1")), int(env.get("DISTILLERY_NNODES", "1")),
                     int(env.get("DISTILLERY_NODE_RANK", "0")), env.get("DISTILLERY_MASTER_ADDR", "127.0.0.1"),
                     int(env.get("DISTILLERY_MASTER_PORT", "29500")))
        if not 0 <= launch.node_rank < launch.nnodes:
            sys.exit(f"error: node rank {launch.node_rank} is not one of the {launch.nnodes} nodes (NODE_RANK=0..NODES-1)")
        return launch

    @property
    def world(self) -> int:
        return self.nproc * self.nnodes

    def torchrun(self) -> list[str]:
        """torchrun's arguments: standalone on one node, a static rendezvous at node 0 on several."""
        if self.nnodes == 1:
            where = ["--standalone"]
        else:
            where = [f"--nnodes={self.nnodes}", f"--node_rank={self.node_rank}",
                     f"--master_addr={self.master_addr}", f"--master_port={self.master_port}"]
        return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={self.nproc}",
                "-m", "pipeline.stages.train"]


def relaunch_distributed(launch: Launch) -> None:
    """Re-run this stage under torchrun (gloo on CPU, nccl on GPU)."""
    cmd = launch.torchrun()
    print(f"train: launching {launch.nproc} process(es) on node {launch.node_rank} of {launch.nnodes}: "
          f"{' '.join(cmd)}", flush=True)
    sys.exit(subprocess.call(cmd))
