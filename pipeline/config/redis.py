"""Where a Redis server is, for the crawl and dedup sections that use one."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ConfigError


@dataclass
class RedisConfig:
    host: str
    port: int
    db: int
    basename: str
    """Prefix of the stage's keys in Redis (dedup: the LSH index, cleared before and after a run;
    crawl: each site's frontier under <basename>:<site>, deleted when its crawl is complete).
    A password, when the server wants one, comes from the environment: REDIS_PASSWORD."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port: expected 1..65535, got {self.port}")
        if self.db < 0:
            raise ConfigError(f"db: expected a database number >= 0, got {self.db}")
        if not self.basename or any(c.isspace() or c in "%*?[]" for c in self.basename):
            raise ConfigError(f"basename: expected a non-empty key prefix without spaces, % or glob "
                              f"characters, got {self.basename!r}")
