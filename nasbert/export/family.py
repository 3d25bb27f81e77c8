"""``family.json``: every exported member of a family, with its measured numbers (schema in DESIGN.md).

``path`` and ``onnx`` are relative to the family directory (the folder holding ``family.json``). Keys beyond the
schema are kept (in ``extra``) and written back, so that later stages may add their own.

>>> family = Family.load("runs/minilm/family")  # doctest: +SKIP
>>> [(m.name, m.budget, m.latency_ms) for m in family.models]  # doctest: +SKIP
[('x4', '4x', 4.3), ('x8', '8x', 2.1)]
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from ..space import Arch, SpaceError

__all__ = ["FAMILY_FILE", "Family", "FamilyError", "FamilyMember", "member_arch"]

FAMILY_FILE = "family.json"

#: The device keys every family records (a latency profile's DeviceInfo has more; they are kept).
DEVICE_KEYS = {"key": str, "engine": str, "threads": int, "batch": int, "seq_len": int}


class FamilyError(ValueError):
    """A missing or invalid ``family.json``; the message names the file and the key."""


def _version() -> str:
    from .. import __version__

    return __version__


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------- checks


def _type_error(source: str, key: str, expected: str, value: Any) -> FamilyError:
    return FamilyError(f"{source}: key {key!r} must be {expected}, got {value!r}")


def _int(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(source, key, "an integer", value)
    return value


def _float(source: str, key: str, value: Any, *, nullable: bool = False) -> float | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(source, key, "a number or null" if nullable else "a number", value)
    return float(value)


def _str(source: str, key: str, value: Any, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise _type_error(source, key, "a string or null" if nullable else "a string", value)
    return value


def _require(source: str, data: Mapping[str, Any], keys, prefix: str = "") -> None:
    for key in keys:
        if key not in data:
            raise FamilyError(f"{source}: missing required key {prefix + key!r}")


def _relative(source: str, key: str, value: str) -> str:
    if not value or Path(value).is_absolute():
        raise FamilyError(f"{source}: key {key!r} must be a path relative to the family directory, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class FamilyMember:
    """One exported model. ``latency_ms`` is measured on the family's device; ``speedup`` is
    ``teacher_latency_ms / latency_ms`` on the same device; ``valid_loss`` may be null (then ``proxy_loss`` ranks)."""

    name: str
    path: str
    arch: dict
    params: int
    flops: int
    latency_ms: float
    predicted_latency_ms: float | None
    speedup: float
    proxy_loss: float | None
    valid_loss: float | None
    budget: str
    onnx: str | None = None
    #: steps of whole-model distillation after the choice (0 = none; ``valid_loss`` is then the supernet path's)
    distill_steps: int = 0
    #: the whole-model validation loss before that distillation (null when there was none)
    valid_loss_before_distill: float | None = None
    #: where the weights come from: "supernet" (a path of the trained supernet) or "teacher" (the teacher's own
    #: sub-layers, kept as they are: a teacher cut, :mod:`nasbert.export.cuts`)
    source: str = "supernet"
    #: the proxy the export ranks on: mean per-token cosine of the final hidden states to the teacher's
    cosine: float | None = None
    #: why this model was chosen for its budget, in words (the rule, the runner-up, the candidates' count)
    choice: str | None = None
    #: the int8 graph (ONNX Runtime dynamic quantisation, relative to the family directory), its latency and
    #: speed-up over the fp32 teacher (measured in one run with the teacher and the fp32 members), and its
    #: relative output error to the fp32 graph
    int8_onnx: str | None = None
    int8_latency_ms: float | None = None
    int8_speedup: float | None = None
    int8_error: float | None = None
    #: keys beyond the schema, written back unchanged
    extra: dict = field(default_factory=dict, compare=False)

    REQUIRED = ("name", "path", "arch", "params", "flops", "latency_ms", "predicted_latency_ms", "speedup",
                "proxy_loss", "valid_loss", "budget")

    @property
    def loss(self) -> float | None:
        """The loss that ranks members: validation loss, or the proxy loss where there is none."""
        return self.valid_loss if self.valid_loss is not None else self.proxy_loss

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = FAMILY_FILE, key: str = "models[0]") -> FamilyMember:
        if not isinstance(data, Mapping):
            raise _type_error(source, key, "a mapping of a member's keys", data)
        _require(source, data, cls.REQUIRED, prefix=f"{key}.")

        def k(name: str) -> str:
            return f"{key}.{name}"

        try:
            arch = Arch.from_dict(data["arch"]).to_dict()
        except SpaceError as e:
            raise FamilyError(f"{source}: key {k('arch')!r} is not an architecture: {e}") from None
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(
            name=_str(source, k("name"), data["name"]),
            path=_relative(source, k("path"), _str(source, k("path"), data["path"])),
            arch=arch,
            params=_int(source, k("params"), data["params"]),
            flops=_int(source, k("flops"), data["flops"]),
            latency_ms=_float(source, k("latency_ms"), data["latency_ms"]),
            predicted_latency_ms=_float(source, k("predicted_latency_ms"), data["predicted_latency_ms"],
                                        nullable=True),
            speedup=_float(source, k("speedup"), data["speedup"]),
            proxy_loss=_float(source, k("proxy_loss"), data["proxy_loss"], nullable=True),
            valid_loss=_float(source, k("valid_loss"), data["valid_loss"], nullable=True),
            budget=_str(source, k("budget"), data["budget"]),
            onnx=(None if data.get("onnx") is None
                  else _relative(source, k("onnx"), _str(source, k("onnx"), data["onnx"]))),
            distill_steps=_int(source, k("distill_steps"), data.get("distill_steps", 0)),
            valid_loss_before_distill=_float(source, k("valid_loss_before_distill"),
                                             data.get("valid_loss_before_distill"), nullable=True),
            source=_str(source, k("source"), data.get("source", "supernet")),
            cosine=_float(source, k("cosine"), data.get("cosine"), nullable=True),
            choice=_str(source, k("choice"), data.get("choice"), nullable=True),
            int8_onnx=(None if data.get("int8_onnx") is None
                       else _relative(source, k("int8_onnx"), _str(source, k("int8_onnx"), data["int8_onnx"]))),
            int8_latency_ms=_float(source, k("int8_latency_ms"), data.get("int8_latency_ms"), nullable=True),
            int8_speedup=_float(source, k("int8_speedup"), data.get("int8_speedup"), nullable=True),
            int8_error=_float(source, k("int8_error"), data.get("int8_error"), nullable=True),
            extra={name: v for name, v in data.items() if name not in known},
        )


@dataclass(frozen=True)
class Family:
    """A family of compressed models: what :meth:`save` writes to and :meth:`load` reads from ``family.json``.

    ``directory`` is where it was loaded from (member paths resolve against it); it is not written.
    """

    teacher: str
    device: dict
    teacher_latency_ms: float
    models: list[FamilyMember]
    created: str = field(default_factory=_now)
    nasbert_version: str = field(default_factory=_version)
    extra: dict = field(default_factory=dict, compare=False)
    directory: Path | None = field(default=None, compare=False)

    REQUIRED = ("teacher", "device", "teacher_latency_ms", "models")

    def member(self, name: str) -> FamilyMember:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no member named {name!r}; members: {', '.join(m.name for m in self.models)}")

    def member_dir(self, member: FamilyMember) -> Path:
        """The member's directory, absolute (the family must have been loaded or saved)."""
        return self._root() / member.path

    def onnx_path(self, member: FamilyMember) -> Path | None:
        return None if member.onnx is None else self._root() / member.onnx

    def _root(self) -> Path:
        if self.directory is None:
            raise FamilyError("this family has no directory yet: save() it or load() it from one")
        return self.directory.resolve()

    # ------------------------------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher, "device": dict(self.device), "teacher_latency_ms": self.teacher_latency_ms,
            "models": [m.to_dict() for m in self.models], "created": self.created,
            "nasbert_version": self.nasbert_version, **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = FAMILY_FILE, directory: str | os.PathLike | None = None,
                  check_paths: bool = True) -> Family:
        """Build and validate a family. With ``check_paths`` (and a ``directory``), every member's ``path`` and
        ``onnx`` must exist under ``directory``."""
        if not isinstance(data, Mapping):
            raise FamilyError(f"{source}: expected a JSON object with the keys {', '.join(cls.REQUIRED)}, "
                              f"got {type(data).__name__}")
        _require(source, data, cls.REQUIRED)
        device = data["device"]
        if not isinstance(device, Mapping):
            raise _type_error(source, "device", "a mapping (key, engine, threads, batch, seq_len)", device)
        _require(source, device, DEVICE_KEYS, prefix="device.")
        for key, tp in DEVICE_KEYS.items():
            (_int if tp is int else _str)(source, f"device.{key}", device[key])
        teacher_latency = _float(source, "teacher_latency_ms", data["teacher_latency_ms"])
        if not teacher_latency > 0:
            raise FamilyError(f"{source}: key 'teacher_latency_ms' must be positive, got {teacher_latency!r}")
        if not isinstance(data["models"], list):
            raise _type_error(source, "models", "a list of members", data["models"])
        models = [FamilyMember.from_dict(m, source=source, key=f"models[{i}]") for i, m in enumerate(data["models"])]
        seen: set[str] = set()
        for i, m in enumerate(models):
            if m.name in seen:
                raise FamilyError(f"{source}: key 'models[{i}].name': name {m.name!r} is used twice; names must "
                                  "be unique")
            seen.add(m.name)
            if not m.latency_ms > 0:
                raise FamilyError(f"{source}: key 'models[{i}].latency_ms' must be positive, got {m.latency_ms!r}")
            if m.distill_steps < 0:
                raise FamilyError(f"{source}: key 'models[{i}].distill_steps' must be >= 0, got {m.distill_steps!r}")
        known = set(cls.REQUIRED) | {"created", "nasbert_version"}
        family = cls(
            teacher=_str(source, "teacher", data["teacher"]),
            device=dict(device),
            teacher_latency_ms=teacher_latency,
            models=models,
            created=_str(source, "created", data.get("created", "")),
            nasbert_version=_str(source, "nasbert_version", data.get("nasbert_version", "")),
            extra={k: v for k, v in data.items() if k not in known},
            directory=None if directory is None else Path(directory),
        )
        if check_paths and directory is not None:
            family._check_paths(source)
        return family

    def _check_paths(self, source: str) -> None:
        root = self._root()
        for i, m in enumerate(self.models):
            if not (root / m.path).is_dir():
                raise FamilyError(f"{source}: key 'models[{i}].path': member {m.name!r} directory "
                                  f"{str(root / m.path)!r} does not exist")
            if m.onnx is not None and not (root / m.onnx).is_file():
                raise FamilyError(f"{source}: key 'models[{i}].onnx': member {m.name!r} ONNX file "
                                  f"{str(root / m.onnx)!r} does not exist")

    @classmethod
    def load(cls, path: str | os.PathLike, *, check_paths: bool = True) -> Family:
        """Read a family from its directory or from its ``family.json``."""
        path = Path(path)
        file = path / FAMILY_FILE if path.is_dir() else path
        if not file.is_file():
            raise FamilyError(f"family {str(path)!r} not found: pass a family directory (holding {FAMILY_FILE}) "
                              f"or the path of a {FAMILY_FILE}")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FamilyError(f"{file}: not valid JSON: {e}") from None
        return cls.from_dict(data, source=str(file), directory=file.parent, check_paths=check_paths)

    def save(self, directory: str | os.PathLike, *, check_paths: bool = True) -> Path:
        """Write ``directory/family.json`` atomically (validated first; member directories must exist there).
        Returns the file's path. ``self`` is not changed (its ``directory`` may be a temporary one to be renamed);
        :meth:`load` the file for a family that resolves member paths."""
        directory = Path(directory)
        file = directory / FAMILY_FILE
        data = json.loads(json.dumps(self.to_dict()))  # fails on values JSON cannot hold, before writing
        Family.from_dict(data, source=str(file), directory=directory, check_paths=check_paths)
        atomic_write_json(file, data)
        return file


def member_arch(spec: str) -> Arch:
    """``FAMILY_DIR/NAME`` -> that member's architecture; a :class:`FamilyError` naming the problem otherwise."""
    family_dir, _, name = spec.rstrip("/").rpartition("/")
    if not family_dir or not name:
        raise FamilyError(f"--member {spec!r} is not of the form FAMILY_DIR/NAME "
                          "(e.g. runs/default/family/nasbert-4x-5.1M)")
    family = Family.load(family_dir, check_paths=False)
    try:
        return Arch.from_dict(family.member(name).arch)
    except KeyError as e:
        raise FamilyError(f"family {family_dir!r} has {e.args[0]}") from None
