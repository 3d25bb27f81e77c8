"""Every shipped experiment config and search space loads (torchtune's test_configs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasbert import SearchSpace
from nasbert.run import RunConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "experiments").glob("*/config.yaml"))


def test_there_are_experiment_configs():
    assert {p.parent.name for p in CONFIGS} >= {"default", "wikipedia", "bert_base"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_experiment_config_loads(path):
    from nasbert.run.stages import space_for

    config = RunConfig.load(path)
    space = space_for(config)  # ``elastic``: built from the teacher's config
    assert config.train.batch_size >= 1 and config.corpus.seq_len <= space.teacher.max_position_embeddings
    assert (path.parent / "README.md").is_file(), "every experiment states its command and numbers"


def test_default_experiment_is_the_default_run():
    assert RunConfig.load(ROOT / "experiments" / "default" / "config.yaml") == RunConfig()
