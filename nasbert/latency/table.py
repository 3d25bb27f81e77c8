"""The per-op lookup table (NAS-BERT section 3.3): every op at every width, the embeddings, the adapters.

Each entry is one op alone, built from the extracted model's own modules (so it runs the same kernels),
exported to ONNX (or kept in PyTorch) and timed on the device. A model's table latency is the sum of its
entries: embeddings at the first width, each layer, each block-boundary adapter, and the output adapter.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..modeling import NasBertConfig
from ..modeling.configuration_nasbert import adapter_shapes
from ..modeling.modeling_nasbert import NasBertEmbeddings, additive_attention_mask, build_layer
from ..space import Arch, SearchSpace
from ..utils import torch_threads
from .measure import OnnxRuntimeEngine, TorchEngine, measure_interleaved

__all__ = ["LatencyTable", "arch_adapters", "arch_entries", "build_table", "op_key", "table_keys"]


def op_key(op: str, width: int) -> str:
    """The table entry of one layer op at one hidden width."""
    return f"{op}@{width}"


def arch_entries(arch: Arch) -> list[str]:
    """The table entries whose sum is ``arch``'s table latency (one per part of the extracted model)."""
    widths = arch.widths
    keys = [f"embeddings@{widths[0]}"]
    for block in arch.blocks:
        keys += [op_key(op, block.width) for op in block.layers]
    *between, (last, _) = arch_adapters(arch)
    keys += [f"adapter@{a}->{b}" for a, b in between]
    keys.append(f"output@{last}")
    return keys


def arch_adapters(arch: Arch) -> list[tuple[int, int]]:
    """``(in, out)`` of the linear maps the extracted model keeps (:attr:`Arch.adapters`), the output map last
    (its ``out`` is 0 here: the output's width does not enter the table)."""
    return [s for s in adapter_shapes(arch.to_dict()["blocks"], 0, arch.adapters) if s]


def table_keys(space: SearchSpace) -> list[str]:
    """Every entry a model of ``space`` can need (an elastic space's every head and neuron count among them)."""
    widths = list(space.hidden_choices)
    keys = [f"embeddings@{w}" for w in widths]
    keys += [op_key(op, w) for op in space.ops if op != "identity" for w in widths]
    keys += [f"adapter@{a}->{b}" for a in widths for b in widths]
    keys += [f"output@{w}" for w in widths]
    return keys


@dataclass
class LatencyTable:
    """Median latency (ms) of every entry, measured on one device."""

    entries: dict[str, float]
    device: dict = field(default_factory=dict)

    def parts(self, arch: Arch) -> dict[str, float]:
        missing = [k for k in arch_entries(arch) if k not in self.entries]
        if missing:
            raise KeyError(f"the latency table has no entry {missing[0]!r}: it was built for another space "
                           "(rebuild it: nasbert latency --run RUN --force)")
        out: dict[str, float] = {}
        for key in arch_entries(arch):
            out[key] = out.get(key, 0.0) + self.entries[key]
        return out

    def path_ms(self, path) -> float:
        """The table latency of one block path (:class:`~nasbert.space.Path`): the sum of its layers' entries."""
        return float(sum(self.entries[op_key(op, path.width)] for op in path.layers))

    def predict(self, arch: Arch) -> float:
        """The table latency: the sum of ``arch``'s entries, in ms."""
        return float(sum(self.parts(arch).values()))

    def save(self, path: str | os.PathLike) -> None:
        from ..io import atomic_write_json

        atomic_write_json(path, {"device": self.device, "entries": self.entries})

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(dict(data["entries"]), dict(data.get("device", {})))


class _Linear(nn.Linear):
    """``nn.Linear`` whose input is called ``hidden``: TorchEngine feeds a module its inputs by name."""

    def forward(self, hidden):
        return super().forward(hidden)


class _Layer(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden, additive_mask, keep):
        return self.layer(hidden, additive_mask, keep)


def _op_module(key: str, space: SearchSpace, batch: int, seq_len: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A module computing one table entry, and its inputs."""
    name, _, size = key.partition("@")
    t = space.teacher
    g = torch.Generator().manual_seed(0)
    if name == "adapter":
        a, b = (int(x) for x in size.split("->"))
        return _Linear(a, b), {"hidden": torch.randn(batch, seq_len, a, generator=g)}
    width = int(size)
    if name == "output":
        return _Linear(width, t.hidden_size), {"hidden": torch.randn(batch, seq_len, width, generator=g)}
    config = NasBertConfig(blocks=[{"width": width, "ops": ["identity"]}], vocab_size=t.vocab_size,
                           hidden_size=t.hidden_size, head_size=space.head_size, ffn_ratio=space.ffn_ratio,
                           max_position_embeddings=t.max_position_embeddings, type_vocab_size=t.type_vocab_size,
                           **space.mobile_options())
    if name == "embeddings":
        ids = torch.randint(1, t.vocab_size, (batch, seq_len), generator=g)
        return NasBertEmbeddings(config), {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)}
    keep = torch.ones(batch, seq_len, dtype=torch.long)
    inputs = {"hidden": torch.randn(batch, seq_len, width, generator=g),
              "additive_mask": additive_attention_mask(keep, torch.float32), "keep": keep}
    return _Layer(build_layer(config, name, width)), inputs


def _engines(keys, space, *, engine: str, device: str, threads: int, batch: int, seq_len: int,
             workdir: Path, precision: str = "fp32") -> Iterator[tuple[str, object]]:
    from ..onnxio import export_module, quantize_int8

    for key in keys:
        module, inputs = _op_module(key, space, batch, seq_len)
        if engine == "torch":
            yield key, TorchEngine(module, inputs, threads=threads, device=device)
            continue
        path = workdir / (key.replace("@", "_").replace("->", "_") + ".onnx")
        export_module(module, inputs, path)
        if precision == "int8":
            quantize_int8(path, path)
        yield key, OnnxRuntimeEngine(path, {k: v.numpy() for k, v in inputs.items()}, threads=threads,
                                     device=device)


def build_table(space: SearchSpace, *, engine: str = "onnxruntime", device: str = "cpu", threads: int = 1,
                batch: int = 1, seq_len: int = 128, warmup: int = 5, repeats: int = 30, rounds: int = 3,
                seed: int = 0, progress=None, precision: str = "fp32") -> tuple[LatencyTable, dict]:
    """Measure every entry of ``space``'s table (as int8 graphs with ``precision="int8"``). Entries are timed in
    interleaved groups of one kind."""
    keys = table_keys(space)
    timings = {}
    # One thread count for the whole table, so that no timed call switches it (the caller's comes back after).
    with tempfile.TemporaryDirectory(prefix="nasbert-table-") as tmp, \
            torch_threads(threads if engine == "torch" else None):
        engines = dict(_engines(keys, space, engine=engine, device=device, threads=threads, batch=batch,
                                seq_len=seq_len, workdir=Path(tmp), precision=precision))
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(key.partition("@")[0], []).append(key)
        for i, (kind, group) in enumerate(groups.items()):
            timings.update(measure_interleaved({k: engines[k] for k in group}, warmup=warmup, repeats=repeats,
                                               rounds=rounds, seed=seed + i))
            if progress is not None:
                progress(len(group))
    table = LatencyTable({k: timings[k].median_ms for k in keys})
    return table, {k: t.to_dict() for k, t in timings.items()}
