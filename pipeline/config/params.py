"""The whole of params.yaml: every section, and the rules across sections (a name used as both a
site and a dataset, a switch of one section that needs another's setting). `make params` and
`python -m pipeline.config` check it; stages load only their sections (pipeline.config.load_sections)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import PARAMS_FILE, ConfigError, Device, build, read_params
from pipeline.config.chat import ChatConfig
from pipeline.config.crawl import CrawlConfig, SiteConfig, search_labels
from pipeline.config.datasets import DatasetConfig
from pipeline.config.dedup import DedupConfig, decontamination_files
from pipeline.config.eval import EvalConfig
from pipeline.config.export import ExportConfig
from pipeline.config.judge import JudgeConfig
from pipeline.config.model import ModelConfig
from pipeline.config.prepare import PrepareConfig
from pipeline.config.search import SearchConfig
from pipeline.config.serve import ServeConfig
from pipeline.config.synth import SynthConfig
from pipeline.config.teacher import TeacherConfig
from pipeline.config.train import TrainConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Params:
    seed: int
    profile: str
    """How to compute (conf/profile/): models, sizes, devices, memory."""
    domain: str
    """What to learn (conf/domain/): sites, datasets, search labels, exam sets, subject."""
    lr: float
    """Top-level learning rate, so that `dvc exp run -S lr=1e-5` works as typed."""
    device: Device
    """Where the stages that load a model run them (pipeline.runtime.device): auto (CUDA where torch can
    use it, else the CPU), cpu, or cuda (the gpu profiles: a stage fails at once, naming the
    cause, where CUDA is not usable, instead of falling back to hours on the CPU)."""
    chat: ChatConfig
    model: ModelConfig
    sites: dict[str, SiteConfig]
    """The sites to crawl, by name: data/raw/<name>.jsonl, the `site` field of every item."""
    prepare: PrepareConfig
    dedup: DedupConfig
    search: SearchConfig
    teacher: TeacherConfig
    synth: SynthConfig
    train: TrainConfig
    eval: EvalConfig
    judge: JudgeConfig
    export: ExportConfig
    serve: ServeConfig
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    """Datasets to import, by name: data/imported/<name>.jsonl, the `site` field of its records."""
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    """Distributed crawls (sites.<name>.scheduler: redis)."""
    overrides: list[str] = field(default_factory=list)
    """The Hydra overrides `make params` was last given (OVERRIDES=...), which `make repro`,
    `make train` and `dvc exp run -S` keep (conf/selection/current.yaml)."""

    def search_labels(self) -> dict[str, bool]:
        """Site or dataset name -> its search label, for those that set one."""
        return search_labels(self.sites, self.datasets)

    def decontamination_files(self) -> list[str]:
        """The eval sets dedup keeps out of training: every exam set evaluate scores, then
        dedup.decontaminate_against's further ones."""
        return decontamination_files(self.eval, self.dedup)

    def __post_init__(self) -> None:
        if self.eval.enable_thinking is not None and self.chat.template != "native":
            raise ConfigError("eval.enable_thinking: a switch of the model's own template (Qwen3's); "
                              "set chat.template: native, or leave it null")
        for name in [*self.sites, *self.datasets]:
            if not _NAME.match(name):
                raise ConfigError(f"{name!r}: a site or dataset name must be letters, digits, _ . - "
                                  "(it names files and starts every record id)")
        both = sorted(set(self.sites) & set(self.datasets))
        if both:
            raise ConfigError(f"datasets: {', '.join(both)} is a site's name too; record ids start with it, so rename one")


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; ConfigError names the file and the key."""
    path = Path(path)
    data = read_params(path)
    try:
        return build(Params, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_or_exit(path: str | Path = PARAMS_FILE) -> Params:
    """For stage entry points: a bad params file ends the process with one clear line."""
    try:
        return load_params(path)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else PARAMS_FILE
    params = load_or_exit(path)
    print(f"{path}: ok (profile {params.profile}, model source {params.model.source}, sites {', '.join(params.sites)})")
