"""Where a model's data comes from: the synthetic world (`world.World`, a preset) or an interaction log
(`logdata.LogWorld`, `--data`); both give requests and the features of users and items at any moment."""

from __future__ import annotations

from aif_sim.model.logdata import LogConfig, LogWorld
from aif_sim.model.world import World, WorldConfig

DataConfig = WorldConfig | LogConfig
DataWorld = World | LogWorld

LOG_AGE_WINDOW_S = 7 * 86400.0  # model_age on a log: a week of requests per age


def open_world(cfg: DataConfig) -> DataWorld:
    """The world of a config: the synthetic world, or the log it names."""
    return LogWorld(cfg) if isinstance(cfg, LogConfig) else World(cfg)


def config_from_dict(d: dict) -> DataConfig:
    """A config as `to_dict` wrote it (a checkpoint's `world_config`)."""
    return LogConfig(**d) if "data" in d else WorldConfig(**d)


def test_candidates(cfg: DataConfig) -> int:
    """Candidates per held-out request."""
    return cfg.candidates if isinstance(cfg, LogConfig) else cfg.test_candidates


def age_window_s(cfg: DataConfig) -> float:
    """How long a stretch of requests one model age is measured on: the synthetic world's test window, or a week of a log."""
    return LOG_AGE_WINDOW_S if isinstance(cfg, LogConfig) else cfg.test_end_s - cfg.train_end_s
