"""The run directory: one folder that every stage reads and writes, with a manifest of what was done.
:class:`RunDir` owns its layout: every stage asks it for a path, none writes one out.

::

    RUN/
      manifest.json               config, package versions, seed, git sha, status of each stage
      space.yaml                  the search space (after training: the surviving paths of each block)
      supernet/                   supernet.safetensors, supernet.json, tokenizer files
      train/                      checkpoint/ while training, candidates.json
      latency/<device-key>/       the latency profile of one device: table, predictor, accuracy
      search/                     trials.csv, pareto.json, pareto.png (and study.db)
      family/                     the exported members and family.json
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, from_mapping, to_mapping
from ..data import CorpusConfig
from ..export.config import ExportConfig
from ..io import atomic_write_json, fault_point
from ..latency.profile import LatencyConfig, LatencyProfile
from ..redact import strip_password
from ..search.config import SearchConfig
from ..training.config import SPREAD_KEYS as TRAIN_SPREAD_KEYS, RayConfig, TrainConfig

__all__ = ["MANIFEST", "STAGES", "ConfigError", "RunConfig", "RunDir"]

#: The stages of a run, in order (``nasbert run`` runs them all; see nasbert/run/stages.py).
STAGES = ("supernet", "latency", "train", "search", "export")

MANIFEST = "manifest.json"

PACKAGES = ("nasbert", "torch", "transformers", "optuna", "ray", "datasets", "numpy", "onnxruntime", "onnx",
            "safetensors")


@dataclass(frozen=True)
class RunConfig:
    """Configuration of a run. Unknown keys and wrong types are errors that name the key."""

    #: ``elastic`` (the elastic teacher space built from the teacher's config: per layer, its heads, FFN neurons
    #: and depth), a shipped space name (``minilm_l6``, ``bert_base``, ``minilm_l6_elastic``, ``tiny``) or a YAML path
    space: str = "elastic"
    #: a local HF BERT directory, a hub id, or null for the space's default (the built-in MiniLM-L6-H384)
    teacher: str | None = None
    seed: int = 0
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config") -> RunConfig:
        try:
            return from_mapping(cls, data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)


#: keys that say how the work is spread, not what is computed: a run may go on with other values
SPREAD_KEYS = frozenset({*(f"train.{k}" for k in TRAIN_SPREAD_KEYS), "search.workers", "ray.enabled",
                         "ray.address", "ray.num_cpus"})


def _differences(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Keys (dotted) whose values differ between two config mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(old) | set(new), key=str):
            out.update(_differences(old.get(key), new.get(key), f"{prefix}{key}."))
        return out
    return {} if old == new else {prefix.rstrip("."): (old, new)}


def _stored(config: dict[str, Any]) -> dict[str, Any]:
    """The config as the manifest keeps it: the search storage URL without its password."""
    storage = config.get("search", {}).get("storage")
    if not isinstance(storage, str):
        return config
    return {**config, "search": {**config["search"], "storage": strip_password(storage)}}


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunDir:
    """A run directory and its ``manifest.json``."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike, config: RunConfig) -> RunDir:
        """Open (or create) a run directory for ``config``. An existing run made with another config is an
        error, so that two experiments never mix in one directory."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            old = manifest.get("config", {})
            with contextlib.suppress(ConfigError):  # keys added to the config since take their defaults
                old = RunConfig.from_dict(old, source=str(manifest_path)).to_dict()
            for key, (was, now) in _differences(_stored(old), _stored(config.to_dict())).items():
                if key in SPREAD_KEYS:
                    continue
                raise ConfigError(
                    f"run directory {str(path)!r} was made with {key} = {was!r}, not {now!r}: "
                    "pass another --out, or --force to start it again"
                )
            return cls(path, manifest)
        if path.exists() and any(path.iterdir()):
            raise ConfigError(
                f"{str(path)!r} exists, is not empty and is not a nasbert run (no manifest.json): pass another --out"
            )
        run = cls(path, {
            "nasbert_run": 1,
            "created": _now(),
            "config": _stored(config.to_dict()),
            "seed": config.seed,
            "versions": _versions(),
            "git_sha": _git_sha(),
            "stages": {},
        })
        run.save()
        return run

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunDir:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{str(path)!r} is not a nasbert run directory (no {MANIFEST}); make one with "
                                    "`nasbert run`")
        return cls(path, json.loads(manifest_path.read_text(encoding="utf-8")))

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.manifest["config"], source=str(self.manifest_file))

    def save(self) -> None:
        atomic_write_json(self.manifest_file, self.manifest)

    # ---------------------------------------------------------------- the layout (one path per artefact)

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST

    @property
    def space_file(self) -> Path:
        return self.path / "space.yaml"

    @property
    def supernet_dir(self) -> Path:
        return self.path / "supernet"

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    @property
    def latency_dir(self) -> Path:
        return self.path / "latency"

    def profile(self, latency: LatencyConfig) -> LatencyProfile:
        """The latency profile of the device ``latency`` describes (``latency/<device-key>/``; it may not exist yet:
        see :attr:`LatencyProfile.complete`)."""
        from ..latency import device_info

        key = device_info(engine=latency.engine, device=latency.device, threads=latency.threads,
                          batch=latency.batch, seq_len=latency.seq_len, precision=latency.precision).key
        return LatencyProfile(self.latency_dir / key)

    @property
    def search_dir(self) -> Path:
        return self.path / "search"

    @property
    def pareto_file(self) -> Path:
        return self.search_dir / "pareto.json"

    @property
    def family_dir(self) -> Path:
        return self.path / "family"

    def stage_done(self, stage: str) -> bool:
        return self.manifest["stages"].get(stage, {}).get("status") == "done"

    def mark(self, stage: str, status: str, **info: Any) -> None:
        fault_point(f"mark.{stage}.{status}")  # the stage's files are written, the manifest does not say so yet
        entry = self.manifest["stages"].setdefault(stage, {})
        entry.update(status=status, updated=_now(), **info)
        self.save()
