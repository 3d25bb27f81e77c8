"""Search spaces and architectures.

A teacher with ``L`` transformer layers gives a chain of ``2L`` *slots* (one per MHA and FFN sub-layer),
split into ``N`` blocks aligned with the teacher's layers (NAS-BERT, Xu et al. 2021, section 3.1). Each slot
holds one op; each block has one hidden width. Identity ops sit at the end of a block, so two paths that
differ only in where their identities are count once.

Search spaces are YAML files (``search_spaces/*.yaml``) loaded into a frozen, validated :class:`SearchSpace`::

    >>> import numpy as np
    >>> from nasbert import SearchSpace
    >>> space = SearchSpace.load("tiny")
    >>> arch = space.sample(np.random.default_rng(0))
    >>> space.num_params(arch) > 0
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .modeling.configuration_nasbert import (BOTTLENECK_ACTS, LAYER_OPS, NORMS, SEPCONV_KERNELS, OpSpec,
                                             adapter_shapes, bottleneck_shape, is_layer_op, op_spec,
                                             pruned_ffn_inner, pruned_mha_heads)

__all__ = ["OPS", "Arch", "BlockArch", "SearchSpace", "SpaceError", "TeacherSpec", "op_params", "op_flops"]

#: The ops of a NAS-BERT slot (a space's default). ``sepconvK`` is a depthwise convolution of kernel K followed by
#: a pointwise one. A space may also list MobileBERT bottleneck ops, ``bottleneck{B}x{N}``: a layer that keeps the
#: block's width w on its residual and computes inside a B-wide bottleneck with N stacked FFNs (N = 1..4).
OPS = (*LAYER_OPS, "identity")
#: The heads a thinned teacher cut keeps in every attention, as fractions of the teacher's (SearchSpace.teacher_cuts).
#: A budget that cannot hold k whole attentions can hold k thinner ones, and depth is what a small model needs to
#: read a sentence pair: thinned 4-layer cuts scored 73.5 and 74.4 on the search's probe at 6x and 4x, against
#: 61.5 and 70.2 for the whole-attention cuts there (docs/benchmarks.md, 2026-12-06). A third, a half and two
#: thirds: the probe chooses among them; every head count stays in the space for the sampler.
CUT_HEAD_FRACTIONS = (1 / 3, 1 / 2, 2 / 3)
#: A thinned cut's FFNs: skipped or one of this many smallest offered sizes (thinning the attention pays for depth
#: only where the FFNs are small too).
THIN_CUT_FFNS = 2
MAX_KERNEL = max(SEPCONV_KERNELS.values())


class SpaceError(ValueError):
    """An invalid search space or an architecture that does not belong to one."""


# --------------------------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockArch:
    """One block of an architecture: its hidden width and the op of each of its slots."""

    width: int
    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))

    @property
    def layers(self) -> tuple[str, ...]:
        """The non-identity ops, in order: the layers an extracted model has for this block."""
        return tuple(op for op in self.ops if op != "identity")

    def __str__(self) -> str:
        return f"{self.width}:" + ",".join(self.ops)


@dataclass(frozen=True)
class Arch:
    """A full architecture: one :class:`BlockArch` per block. Round-trips through JSON.

    >>> a = Arch.parse("32:mha,ffn,identity,identity|16:sepconv3,ffn,mha,identity")
    >>> Arch.from_json(a.to_json()) == a
    True
    """

    blocks: tuple[BlockArch, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(b.width for b in self.blocks)

    @property
    def num_layers(self) -> int:
        return sum(len(b.layers) for b in self.blocks)

    @property
    def adapters(self) -> bool | list[bool]:
        """The linear maps the extracted model keeps (``NasBertConfig.adapters``): the one into a block with no
        layers is folded into the next, so a run of empty blocks costs one map, not one per boundary.

        >>> Arch.parse("32:mha,ffn|16:identity,identity").adapters, Arch.parse("32:mha|16:ffn").adapters
        ([False, True], True)
        """
        keep = [bool(b.layers) for b in self.blocks[1:]] + [True]
        return True if all(keep) else keep

    @property
    def attention_depth(self) -> int:
        """The blocks that keep an attention layer (``mha`` with any number of heads): how many times the model
        relates its tokens to each other.

        >>> Arch.parse("384:mha,ffn768|384:mha4,identity|384:identity,ffn192").attention_depth
        2
        """
        return sum(any(_spec(op).kind == "mha" for op in b.layers) for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": [{"width": b.width, "ops": list(b.ops)} for b in self.blocks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Arch:
        if not isinstance(data, Mapping) or set(data) != {"blocks"}:
            raise SpaceError(f"an architecture is a mapping with the single key 'blocks', got {data!r}")
        if not isinstance(data["blocks"], (list, tuple)):
            raise SpaceError(f"an architecture's 'blocks' must be a list, got {data['blocks']!r}")
        blocks = []
        for i, block in enumerate(data["blocks"]):
            if not isinstance(block, Mapping) or set(block) != {"width", "ops"}:
                raise SpaceError(f"blocks[{i}] must have exactly the keys 'width' and 'ops', got {block!r}")
            width, ops = block["width"], block["ops"]
            if not _is_int(width):
                raise SpaceError(f"blocks[{i}].width must be an integer, got {width!r}")
            if not isinstance(ops, (list, tuple)) or not all(isinstance(o, str) for o in ops):
                raise SpaceError(f"blocks[{i}].ops must be a list of op names, got {ops!r}")
            blocks.append(BlockArch(int(width), tuple(ops)))
        return cls(tuple(blocks))

    @classmethod
    def from_json(cls, text: str) -> Arch:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpaceError(f"architecture is not valid JSON ({e}): {text[:80]!r}") from None
        return cls.from_dict(data)

    @classmethod
    def parse(cls, text: str) -> Arch:
        """Parse the compact form ``"WIDTH:op,op,...|WIDTH:op,..."`` (what ``str(arch)`` prints) or JSON."""
        text = text.strip()
        if text.startswith("{"):
            return cls.from_json(text)
        blocks = []
        for i, part in enumerate(text.split("|")):
            width, sep, ops = part.partition(":")
            if not sep or not width.strip().isdigit():
                raise SpaceError(f"block {i} of {text!r} is not of the form WIDTH:op,op,...")
            blocks.append(BlockArch(int(width), tuple(o.strip() for o in ops.split(","))))
        return cls(tuple(blocks))

    def __str__(self) -> str:
        return "|".join(str(b) for b in self.blocks)

    def layers_text(self) -> str:
        """Per block, its ops without identities (``-`` for an empty block), joined by `` / ``; the width leads
        each block only where the blocks' widths differ.

        >>> Arch.parse("384:mha,ffn768|384:mha4,identity|384:identity,identity").layers_text()
        'mha,ffn768 / mha4 / -'
        >>> Arch.parse("32:mha,ffn|16:ffn,identity").layers_text()
        '32:mha,ffn / 16:ffn'
        """
        one_width = len(set(self.widths)) == 1
        parts = []
        for block in self.blocks:
            ops = ",".join(op for op in block.ops if op != "identity") or "-"
            parts.append(ops if one_width else f"{block.width}:{ops}")
        return " / ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Exact parameter and FLOP counts of one op (the extracted model's layers; see nasbert/modeling)
# --------------------------------------------------------------------------------------------------------------


def _linear_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _attention_inner(spec: OpSpec, width: int, head_size: int | None) -> int:
    if spec.heads and head_size is None:
        raise ValueError(f"an attention of {spec.heads} heads needs head_size= to count its cost")
    return spec.attention_inner(width, head_size or 1)


def _known_op(op: str, elastic: bool = False) -> bool:
    """An op a space may list: a pruned ``ffn{I}`` or ``mha{h}`` only in an elastic space, which lists attentions,
    FFNs and identity only (elsewhere an ``ffn{I}`` belongs to every space with ``ffn``)."""
    if op == "identity":
        return True
    if not is_layer_op(op):
        return False
    if elastic:
        return op_spec(op).kind in ("mha", "ffn")
    return pruned_ffn_inner(op) is None and pruned_mha_heads(op) is None


def _spec(op: str) -> OpSpec:
    try:
        return op_spec(op)
    except ValueError:
        raise SpaceError(f"unknown op {op!r}; known ops: {', '.join(OPS)}") from None


def op_params(op: str, width: int, *, ffn_ratio: int, head_size: int | None = None) -> int:
    """Parameters of one layer (op + its LayerNorm) at ``width`` (``head_size``: needed by ``mha{h}``)."""
    spec, layer_norm = _spec(op), 2 * width
    if spec.kind == "identity":
        return 0
    if spec.kind == "bottleneck":  # input and shared q/k bottlenecks, q, k, v, attention output, N FFNs, output; norms
        b, n = spec.intra, spec.num_ffn
        ffn = _linear_params(b, ffn_ratio * b) + _linear_params(ffn_ratio * b, b) + 2 * b
        return (2 * (_linear_params(width, b) + 2 * b) + 2 * _linear_params(b, b) + _linear_params(width, b)
                + _linear_params(b, b) + 2 * b + n * ffn + _linear_params(b, width) + 2 * width)
    if spec.kind == "mha":  # query, key, value (width -> a), output dense (a -> width)
        a = _attention_inner(spec, width, head_size)
        return 3 * _linear_params(width, a) + _linear_params(a, width) + layer_norm
    if spec.kind == "ffn":
        inner = spec.ffn_inner(width, ffn_ratio)
        return _linear_params(width, inner) + _linear_params(inner, width) + layer_norm
    # sepconv: depthwise (width x 1 x k, bias) + pointwise
    return width * spec.kernel + width + _linear_params(width, width) + layer_norm


def op_flops(op: str, width: int, seq_len: int, *, ffn_ratio: int, head_size: int | None = None) -> int:
    """FLOPs (2 x multiply-accumulates) of one layer for one sequence of ``seq_len`` tokens.

    Counts matrix products (linear layers, attention scores and context) and convolutions; element-wise work
    (softmax, LayerNorm, activations, bias adds) is not counted, as in ``torch.utils.flop_counter``.
    """
    spec, t, w = _spec(op), seq_len, width
    if spec.kind == "identity":
        return 0
    if spec.kind == "bottleneck":  # 3 (T x w x b) in, q, k, out: 3 (T x b x b), N FFNs, (T x b x w) out, attention
        b, n = spec.intra, spec.num_ffn
        return 2 * (4 * t * w * b + 3 * t * b * b + n * 2 * t * b * ffn_ratio * b + 2 * t * t * b)
    if spec.kind == "mha":  # q, k, v, out: 4 (T x w x a); scores and context: 2 (T x T x a); a = w for mha
        a = _attention_inner(spec, w, head_size)
        return 2 * (4 * t * w * a + 2 * t * t * a)
    if spec.kind == "ffn":
        return 2 * (2 * t * w * spec.ffn_inner(w, ffn_ratio))
    return 2 * (t * w * spec.kernel + t * w * w)  # sepconv


# --------------------------------------------------------------------------------------------------------------
# Search spaces
# --------------------------------------------------------------------------------------------------------------


def _shipped_dir() -> Path:
    """``search_spaces/``: inside the package when installed from a wheel, at the repository root otherwise."""
    installed = Path(__file__).resolve().parent / "search_spaces"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "search_spaces"


def _parse_candidates(data: Any, source: str) -> list[list[BlockArch]]:
    """``candidates``: one list per block of path strings, or of mappings with a ``path`` key (plus the
    metrics training recorded for it: ``valid_loss``, ``params``, ``flops``, ``latency_ms``)."""
    if not isinstance(data, list):
        raise SpaceError(f"{source}: 'candidates' must be a list with one list of paths per block")
    blocks = []
    for n, entries in enumerate(data):
        if not isinstance(entries, list):
            raise SpaceError(f"{source}: 'candidates[{n}]' must be a list of paths")
        paths = []
        for entry in entries:
            if isinstance(entry, Mapping):
                unknown = sorted(set(entry) - {"path", "valid_loss", "params", "flops", "latency_ms"})
                if unknown or "path" not in entry:
                    raise SpaceError(f"{source}: a candidate of block {n} must have a 'path' and may have "
                                     f"valid_loss, params, flops, latency_ms; got {dict(entry)!r}")
                entry = entry["path"]
            if not isinstance(entry, str):
                raise SpaceError(f"{source}: candidate {entry!r} of block {n} is not a path string")
            arch = Arch.parse(entry)
            if len(arch.blocks) != 1:
                raise SpaceError(f"{source}: candidate {entry!r} of block {n} must be one block, WIDTH:op,...")
            paths.append(arch.blocks[0])
        blocks.append(paths)
    return blocks


def _choice(data: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str, source: str) -> str:
    value = data.get(key, default)
    if value not in allowed:
        raise SpaceError(f"{source}: {key!r} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclass(frozen=True)
class TeacherSpec:
    """The shape of the teacher a space is built for (checked against the real teacher when it is loaded)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int
    #: default teacher: a local HF BERT directory, a hub id, or null for the built-in MiniLM-L6-H384
    name: str | None = None


@dataclass(frozen=True)
class SearchSpace:
    """A NAS-BERT search space for one teacher shape. Build with :meth:`load` or :meth:`from_dict`."""

    name: str
    teacher: TeacherSpec
    num_blocks: int
    hidden_choices: tuple[int, ...]
    ops: tuple[str, ...] = OPS
    head_size: int = 64
    ffn_ratio: int = 4
    description: str = ""
    #: MobileBERT options: head width inside bottleneck ops, their norm ("nonorm" | "layernorm") and FFN
    #: activation ("relu" | "gelu"); a factorised embedding width (None = BERT's embeddings) and its norm
    bottleneck_head_size: int = 32
    bottleneck_norm: str = "nonorm"
    bottleneck_act: str = "relu"
    factorized_embedding_size: int | None = None
    embedding_norm: str = "layernorm"
    #: an elastic teacher space (:meth:`elastic_for`): one block per teacher layer at the teacher's width, whose two
    #: slots hold that layer's attention with h of its heads (``mha{h}``, ``mha`` for all) and its FFN with n of its
    #: neurons (``ffn{n}``, ``ffn``), each optional; ``ops`` lists the head and neuron counts offered
    elastic: bool = False
    #: after progressive shrinking: the surviving paths of each block (None = every path of the space)
    candidates: tuple[tuple[BlockArch, ...], ...] | None = None

    @classmethod
    def elastic_for(cls, teacher: TeacherSpec, *, name: str = "elastic", head_step: int = 1,
                    ffn_steps: int = 8, description: str = "") -> SearchSpace:
        """The elastic teacher space of any BERT-like ``teacher``: per teacher layer, its attention with every
        ``head_step``-th count of its heads or skipped, and its FFN with every 1/``ffn_steps`` of its neurons or
        skipped, all at the teacher's width (DynaBERT's and Minitron's per-layer heads, neurons and depth over the
        teacher's own weights). The teacher is one of its architectures, and so is every layer-dropped teacher.

        >>> spec = TeacherSpec(384, 6, 12, 1536, 30522, 512, 2)
        >>> space = SearchSpace.elastic_for(spec)
        >>> space.num_blocks, space.num_paths(0), space.ops[:3], space.ops[-3:]
        (6, 117, ('mha1', 'mha2', 'mha3'), ('ffn1344', 'ffn', 'identity'))
        """
        heads, inner = teacher.num_attention_heads, teacher.intermediate_size
        if not 1 <= head_step <= heads or not 1 <= ffn_steps <= inner or inner % ffn_steps:
            raise SpaceError(f"elastic space: head_step must be 1..{heads} and ffn_steps a divisor of the teacher's "
                             f"{inner} FFN neurons, got head_step={head_step}, ffn_steps={ffn_steps}")
        head_counts = sorted({*range(head_step, heads, head_step), heads})
        inners = [q * inner // ffn_steps for q in range(1, ffn_steps + 1)]
        ops = ([f"mha{h}" for h in head_counts if h < heads] + ["mha"] + [f"ffn{n}" for n in inners if n < inner]
               + ["ffn", "identity"])
        space = cls(name=name, teacher=teacher, num_blocks=teacher.num_hidden_layers,
                    hidden_choices=(teacher.hidden_size,), ops=tuple(ops),
                    head_size=teacher.hidden_size // teacher.num_attention_heads,
                    ffn_ratio=inner // teacher.hidden_size, elastic=True,
                    description=description or f"elastic teacher space: per layer, 0..{heads} heads and 0..{inner} "
                                               f"FFN neurons in steps of {inner // ffn_steps}")
        space._validate(name)
        return space

    # ---------------------------------------------------------------- loading and validation

    @classmethod
    def load(cls, name_or_path: str | Path) -> SearchSpace:
        """Load a shipped space by name (``"minilm_l6"``, ``"bert_base"``, ``"tiny"``) or a YAML file path."""
        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.is_file():
                raise SpaceError(f"search space file {str(path)!r} does not exist")
            text, source = path.read_text(encoding="utf-8"), str(path)
        else:
            shipped = _shipped_dir() / f"{name_or_path}.yaml"
            if not shipped.is_file():
                raise SpaceError(
                    f"unknown search space {str(name_or_path)!r}: pass a YAML file path or one of "
                    f"{', '.join(cls.shipped())}"
                )
            text, source = shipped.read_text(encoding="utf-8"), f"{name_or_path}.yaml"
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpaceError(f"{source}: not valid YAML: {e}") from None
        return cls.from_dict(data, source=source)

    @staticmethod
    def shipped() -> list[str]:
        """Names of the search spaces that ship with nasbert."""
        return sorted(p.stem for p in _shipped_dir().glob("*.yaml"))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "search space") -> SearchSpace:
        if not isinstance(data, Mapping):
            raise SpaceError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise SpaceError(f"{source}: unknown key {unknown[0]!r}; allowed keys: {', '.join(fields)}")
        elastic = data.get("elastic", False)
        if not isinstance(elastic, bool):
            raise SpaceError(f"{source}: 'elastic' must be true or false, got {elastic!r}")
        for key in ("name", "teacher") if elastic else ("name", "teacher", "num_blocks", "hidden_choices"):
            if key not in data:
                raise SpaceError(f"{source}: missing required key {key!r}")

        teacher = data["teacher"]
        if not isinstance(teacher, Mapping):
            raise SpaceError(f"{source}: 'teacher' must be a mapping of the teacher's dimensions")
        tfields = [f.name for f in dataclasses.fields(TeacherSpec)]
        unknown = sorted(set(teacher) - set(tfields))
        if unknown:
            raise SpaceError(f"{source}: unknown key 'teacher.{unknown[0]}'; allowed: {', '.join(tfields)}")
        for key in tfields:
            if key == "name":
                if teacher.get("name") is not None and not isinstance(teacher["name"], str):
                    raise SpaceError(f"{source}: 'teacher.name' must be a string or null")
                continue
            if key not in teacher:
                raise SpaceError(f"{source}: missing required key 'teacher.{key}'")
            if not _is_int(teacher[key]) or teacher[key] <= 0:
                raise SpaceError(f"{source}: 'teacher.{key}' must be a positive integer, got {teacher[key]!r}")

        def positive_int(key: str) -> int:
            value = data[key]
            if not _is_int(value) or value <= 0:
                raise SpaceError(f"{source}: {key!r} must be a positive integer, got {value!r}")
            return int(value)

        if elastic:
            return cls._elastic_from_dict(data, source)
        choices = data["hidden_choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{source}: 'hidden_choices' must be a non-empty list of widths")
        for c in choices:
            if not _is_int(c) or c <= 0:
                raise SpaceError(f"{source}: 'hidden_choices' must hold positive integers, got {c!r}")
        ops = data.get("ops", list(OPS))
        if not isinstance(ops, list) or not ops or not all(isinstance(o, str) for o in ops):
            raise SpaceError(f"{source}: 'ops' must be a non-empty list of op names")

        space = cls(
            name=str(data["name"]),
            teacher=TeacherSpec(**{k: (int(v) if k != "name" else v) for k, v in teacher.items()}),
            num_blocks=positive_int("num_blocks"),
            hidden_choices=tuple(int(c) for c in choices),
            ops=tuple(ops),
            head_size=positive_int("head_size") if "head_size" in data else cls.head_size,
            ffn_ratio=positive_int("ffn_ratio") if "ffn_ratio" in data else cls.ffn_ratio,
            description=str(data.get("description", "")),
            bottleneck_head_size=(positive_int("bottleneck_head_size") if "bottleneck_head_size" in data
                                  else cls.bottleneck_head_size),
            bottleneck_norm=_choice(data, "bottleneck_norm", NORMS, cls.bottleneck_norm, source),
            bottleneck_act=_choice(data, "bottleneck_act", BOTTLENECK_ACTS, cls.bottleneck_act, source),
            factorized_embedding_size=(positive_int("factorized_embedding_size")
                                       if data.get("factorized_embedding_size") is not None else None),
            embedding_norm=_choice(data, "embedding_norm", NORMS, cls.embedding_norm, source),
        )
        space._validate(source)
        if data.get("candidates") is not None:
            space = space.with_candidates(_parse_candidates(data["candidates"], source), source=source)
        return space

    @classmethod
    def _elastic_from_dict(cls, data: Mapping[str, Any], source: str) -> SearchSpace:
        """An elastic space from its YAML: the teacher, optionally ``ops`` (else every head count and every 1/8 of
        the FFN), and the derived keys (``num_blocks``, ``hidden_choices``, ``head_size``, ``ffn_ratio``), which
        may be given but must then agree with the teacher."""
        t = data["teacher"]
        teacher = TeacherSpec(**{k: (int(v) if k != "name" else v) for k, v in t.items()})
        space = cls.elastic_for(teacher, name=str(data["name"]), description=str(data.get("description", "")))
        if data.get("ops") is not None:
            ops = data["ops"]
            if not isinstance(ops, list) or not ops or not all(isinstance(o, str) for o in ops):
                raise SpaceError(f"{source}: 'ops' must be a non-empty list of op names")
            space = dataclasses.replace(space, ops=tuple(ops))
        derived = {"num_blocks": space.num_blocks, "hidden_choices": list(space.hidden_choices),
                   "head_size": space.head_size, "ffn_ratio": space.ffn_ratio}
        for key, value in derived.items():
            if key in data and data[key] != value:
                raise SpaceError(f"{source}: an elastic space has {key} = {value} (from its teacher), got "
                                 f"{data[key]!r}; leave the key out")
        others = sorted(set(data) - {"name", "description", "teacher", "elastic", "ops", "candidates", *derived})
        if others:
            raise SpaceError(f"{source}: {others[0]!r} does not apply to an elastic space")
        space._validate(source)
        if data.get("candidates") is not None:
            space = space.with_candidates(_parse_candidates(data["candidates"], source), source=source)
        return space

    def without_candidates(self) -> SearchSpace:
        """This space with every path, before shrinking (what a supernet holds and a latency profile samples)."""
        return dataclasses.replace(self, candidates=None)

    def with_candidates(self, candidates, *, source: str = "candidates") -> SearchSpace:
        """This space restricted to ``candidates`` (one sequence of :class:`BlockArch` per block)."""
        candidates = tuple(tuple(block) for block in candidates)
        if len(candidates) != self.num_blocks:
            raise SpaceError(f"{source}: 'candidates' has {len(candidates)} blocks, the space has {self.num_blocks}")
        full = self.without_candidates()
        for n, paths in enumerate(candidates):
            if not paths:
                raise SpaceError(f"{source}: 'candidates' of block {n} is empty")
            for path in paths:
                probe = Arch(tuple(path if m == n else full.largest_arch().blocks[m] for m in range(self.num_blocks)))
                try:
                    full.validate(probe)
                except SpaceError as e:
                    raise SpaceError(f"{source}: candidate {str(path)!r} of block {n}: {e}") from None
            if len(set(paths)) != len(paths):
                raise SpaceError(f"{source}: 'candidates' of block {n} lists a path twice")
        return dataclasses.replace(self, candidates=candidates)

    def _validate(self, source: str) -> None:
        t = self.teacher
        bad_ops = [o for o in self.ops if not _known_op(o, self.elastic)]
        if self.elastic:
            self._validate_elastic(source, bad_ops)
        if bad_ops:
            pruned = pruned_ffn_inner(bad_ops[0]) is not None
            raise SpaceError(f"{source}: 'ops' has unknown op {bad_ops[0]!r}; known ops: {', '.join(OPS)} and "
                             "bottleneck{B}x{N} (intra width B, N = 1..4 stacked FFNs)"
                             + ("; a pruned ffn{I} is no op of its own: list 'ffn' (its pruned versions share "
                                "its weights)" if pruned else ""))
        for op in self.ops:
            shape = bottleneck_shape(op)
            if shape is None:
                continue
            if shape[0] % self.bottleneck_head_size:
                raise SpaceError(f"{source}: op {op!r} has an intra width of {shape[0]}, not a multiple of "
                                 f"'bottleneck_head_size' = {self.bottleneck_head_size}")
            if shape[0] > min(self.hidden_choices):
                raise SpaceError(f"{source}: op {op!r} has an intra width of {shape[0]}, wider than the narrowest "
                                 f"width {min(self.hidden_choices)} in 'hidden_choices'; a bottleneck must be "
                                 "narrower than the block it sits in")
        if len(set(self.ops)) != len(self.ops):
            raise SpaceError(f"{source}: 'ops' lists an op twice")
        if not [o for o in self.ops if o != "identity"]:
            raise SpaceError(f"{source}: 'ops' must hold at least one op other than identity")
        if t.num_hidden_layers % self.num_blocks:
            raise SpaceError(
                f"{source}: 'num_blocks' = {self.num_blocks} does not divide 'teacher.num_hidden_layers' = "
                f"{t.num_hidden_layers}; blocks are aligned with teacher layers, pick a divisor"
            )
        if len(set(self.hidden_choices)) != len(self.hidden_choices):
            raise SpaceError(f"{source}: 'hidden_choices' lists a width twice")
        if list(self.hidden_choices) != sorted(self.hidden_choices):
            raise SpaceError(f"{source}: 'hidden_choices' must be in increasing order")
        for w in self.hidden_choices:
            if w > t.hidden_size:
                raise SpaceError(
                    f"{source}: 'hidden_choices' has {w}, wider than 'teacher.hidden_size' = {t.hidden_size}; "
                    "weights are sliced from the teacher, so no width may exceed it"
                )
            if "mha" in self.ops and w % self.head_size:
                raise SpaceError(
                    f"{source}: 'hidden_choices' has {w}, not a multiple of 'head_size' = {self.head_size} "
                    "(an mha op has width / head_size heads)"
                )
        if t.hidden_size % t.num_attention_heads or t.hidden_size // t.num_attention_heads != self.head_size:
            raise SpaceError(
                f"{source}: 'head_size' = {self.head_size} but the teacher's heads are "
                f"{t.hidden_size}/{t.num_attention_heads} wide; mha ops start from the teacher's heads, "
                "so head_size must equal teacher.hidden_size / teacher.num_attention_heads"
            )
        if self.ffn_ratio * t.hidden_size != t.intermediate_size:
            raise SpaceError(
                f"{source}: 'ffn_ratio' = {self.ffn_ratio} gives an FFN of {self.ffn_ratio * t.hidden_size} "
                f"at the teacher's width, but 'teacher.intermediate_size' = {t.intermediate_size}; "
                "ffn ops start from the teacher's FFNs, so they must match"
            )

    def _validate_elastic(self, source: str, bad_ops: list[str]) -> None:
        t = self.teacher
        if bad_ops:
            raise SpaceError(f"{source}: an elastic space lists attentions (mha, mha{{h}}), FFNs (ffn, ffn{{n}}) and "
                             f"identity; got {bad_ops[0]!r}")
        if self.hidden_choices != (t.hidden_size,) or self.num_blocks != t.num_hidden_layers:
            raise SpaceError(f"{source}: an elastic space has one block per teacher layer at the teacher's width")
        if "identity" not in self.ops:
            raise SpaceError(f"{source}: an elastic space needs 'identity' (a skipped sub-layer)")
        for op in self.ops:
            spec = op_spec(op)
            if spec.heads and not spec.heads < t.num_attention_heads:
                raise SpaceError(f"{source}: {op} keeps {spec.heads} heads; the teacher has {t.num_attention_heads} "
                                 "(all of them: 'mha')")
            if spec.inner and not spec.inner < t.intermediate_size:
                raise SpaceError(f"{source}: {op} keeps {spec.inner} FFN neurons; the teacher has "
                                 f"{t.intermediate_size} (all of them: 'ffn')")
        kinds = {op_spec(op).kind for op in self.ops if op != "identity"}
        if not kinds >= {"mha", "ffn"}:
            raise SpaceError(f"{source}: an elastic space needs at least one attention and one FFN op")

    def _elastic_ops(self, kind: str) -> tuple[str, ...]:
        return tuple(op for op in self.ops if op != "identity" and op_spec(op).kind == kind)

    # ---------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        if self.elastic:
            return {"name": self.name, "description": self.description, "elastic": True,
                    "teacher": dataclasses.asdict(self.teacher), "ops": list(self.ops),
                    **({"candidates": [[str(p) for p in block] for block in self.candidates]}
                       if self.candidates else {})}
        return {
            "name": self.name,
            "description": self.description,
            "teacher": dataclasses.asdict(self.teacher),
            "num_blocks": self.num_blocks,
            "hidden_choices": list(self.hidden_choices),
            "ops": list(self.ops),
            "head_size": self.head_size,
            "ffn_ratio": self.ffn_ratio,
            **self._mobile_options(),
            **({"candidates": [[str(p) for p in block] for block in self.candidates]} if self.candidates else {}),
        }

    def mobile_options(self) -> dict[str, Any]:
        """The MobileBERT options (``NasBertConfig`` keyword arguments of the same names)."""
        return {k: getattr(self, k) for k in ("bottleneck_head_size", "bottleneck_norm", "bottleneck_act",
                                              "factorized_embedding_size", "embedding_norm")}

    def _mobile_options(self) -> dict[str, Any]:
        """The MobileBERT options that differ from their defaults (so NAS-BERT spaces serialise as before)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: v for k, v in self.mobile_options().items() if v != defaults[k]}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ---------------------------------------------------------------- structure

    @property
    def num_slots(self) -> int:
        """Slots in the whole chain: two per teacher layer."""
        return 2 * self.teacher.num_hidden_layers

    @property
    def slots_per_block(self) -> int:
        return self.num_slots // self.num_blocks

    @property
    def layers_per_block(self) -> int:
        """Teacher layers covered by one block."""
        return self.teacher.num_hidden_layers // self.num_blocks

    @property
    def teacher_boundaries(self) -> tuple[int, ...]:
        """Index into the teacher's ``hidden_states`` tuple (0 = embeddings) at the end of each block."""
        return tuple((n + 1) * self.layers_per_block for n in range(self.num_blocks))

    def block_slots(self, block: int) -> range:
        """Global slot indices of ``block``."""
        return range(block * self.slots_per_block, (block + 1) * self.slots_per_block)

    @property
    def _layer_ops(self) -> tuple[str, ...]:
        return tuple(o for o in self.ops if o != "identity")

    def _paths_per_width(self) -> int:
        if self.elastic:  # (attention or none, FFN or none)
            return (len(self._elastic_ops("mha")) + 1) * (len(self._elastic_ops("ffn")) + 1)
        k, n_ops = self.slots_per_block, len(self._layer_ops)
        if "identity" in self.ops:  # j layers then k - j identities, j = 0..k
            return sum(n_ops**j for j in range(k + 1))
        return n_ops**k

    def num_paths(self, block: int) -> int:
        """Distinct paths (width x canonical op sequence) of ``block``."""
        self._check_block_index(block)
        if self.candidates is not None:
            return len(self.candidates[block])
        return len(self.hidden_choices) * self._paths_per_width()

    def iter_block_paths(self, block: int) -> Iterator[BlockArch]:
        """Every distinct path of ``block``, in a fixed order (narrow widths and short paths first; after
        shrinking, the surviving candidates in their stored order)."""
        self._check_block_index(block)
        if self.candidates is not None:
            yield from self.candidates[block]
            return
        import itertools

        if self.elastic:
            for attention in ("identity", *self._elastic_ops("mha")):
                for ffn in ("identity", *self._elastic_ops("ffn")):
                    yield self._elastic_path(attention, ffn)
            return
        k = self.slots_per_block
        lengths = range(k + 1) if "identity" in self.ops else [k]
        for width in self.hidden_choices:
            for j in lengths:
                for layers in itertools.product(self._layer_ops, repeat=j):
                    yield BlockArch(width, tuple(layers) + ("identity",) * (k - j))

    def _check_block_index(self, block: int) -> None:
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"block {block} out of range: space {self.name!r} has {self.num_blocks} blocks")

    def sample_block(self, block: int, rng: np.random.Generator) -> BlockArch:
        """A path of ``block`` drawn uniformly from its :meth:`num_paths` distinct paths."""
        self._check_block_index(block)
        if self.candidates is not None:
            return self.candidates[block][int(rng.integers(len(self.candidates[block])))]
        if self.elastic:  # each sub-layer: one of its sizes or skipped, uniformly
            attention = ("identity", *self._elastic_ops("mha"))
            ffn = ("identity", *self._elastic_ops("ffn"))
            return self._elastic_path(attention[int(rng.integers(len(attention)))], ffn[int(rng.integers(len(ffn)))])
        k, layer_ops = self.slots_per_block, self._layer_ops
        width = int(rng.choice(self.hidden_choices))
        if "identity" in self.ops:
            weights = np.array([float(len(layer_ops)) ** j for j in range(k + 1)])
            j = int(rng.choice(k + 1, p=weights / weights.sum()))
        else:
            j = k
        layers = tuple(layer_ops[i] for i in rng.integers(0, len(layer_ops), size=j))
        return BlockArch(width, layers + ("identity",) * (k - j))

    def _elastic_path(self, attention: str, ffn: str) -> BlockArch:
        """One layer of an elastic space: its attention op then its FFN op, a skipped one (identity) last."""
        layers = tuple(op for op in (attention, ffn) if op != "identity")
        return BlockArch(self.teacher.hidden_size, layers + ("identity",) * (2 - len(layers)))

    def sample(self, rng: np.random.Generator) -> Arch:
        """An architecture whose blocks are drawn independently and uniformly from their paths."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError("sample() takes a numpy.random.Generator, e.g. numpy.random.default_rng(seed)")
        return Arch(tuple(self.sample_block(n, rng) for n in range(self.num_blocks)))

    def largest_arch(self) -> Arch:
        """Widest width, all slots filled MHA/FFN alternately (the teacher's layout at the widest choice)."""
        return self._alternating(max(self.hidden_choices))

    def smallest_arch(self) -> Arch:
        """Narrowest width with the cheapest non-empty path: one op per block, the lightest available."""
        w = min(self.hidden_choices)
        cheapest = min(self._layer_ops, key=lambda o: op_params(o, w, ffn_ratio=self.ffn_ratio, head_size=self.head_size))
        fill = ("identity",) * (self.slots_per_block - 1) if "identity" in self.ops else (cheapest,) * (
            self.slots_per_block - 1
        )
        return Arch(tuple(BlockArch(w, (cheapest,) + fill) for _ in range(self.num_blocks)))

    def teacher_arch(self) -> Arch:
        """The architecture that is the teacher itself: full teacher width, MHA and FFN alternating.

        It lies outside ``hidden_choices`` when the teacher is wider than every choice (as for BERT-base in the
        NAS-BERT space); the supernet still runs it, which is how its initialisation is checked.
        """
        return self._alternating(self.teacher.hidden_size)

    def layer_dropped(self, k: int) -> Arch:
        """The teacher's bottom ``k`` layers, whole (an elastic space's architecture of a layer-dropped teacher)."""
        if not self.elastic or not 1 <= k <= self.teacher.num_hidden_layers:
            raise SpaceError(f"layer_dropped needs an elastic space and 1 <= k <= {self.teacher.num_hidden_layers}")
        keep, skip = self._elastic_path("mha", "ffn"), self._elastic_path("identity", "identity")
        return Arch(tuple(keep if n < k else skip for n in range(self.num_blocks)))

    def teacher_cuts(self) -> list[Arch]:
        """An elastic space's teacher cuts: the teacher's bottom k layers for every k, then each k with every FFN at
        each offered size, with or without the next layer's attention, then each k with every attention thinned to
        the offered head count nearest each of :data:`CUT_HEAD_FRACTIONS` of its heads and every FFN at one of the
        :data:`THIN_CUT_FFNS` smallest sizes or skipped, in that order; neither the teacher itself nor a cut twice.
        The search starts from them and the latency profile times some of them."""
        if not self.elastic:
            raise SpaceError("teacher_cuts needs an elastic space (its ops are the teacher's own sub-layers)")
        layers, path = self.num_blocks, self._elastic_path

        def bottom(kept: list[BlockArch]) -> Arch:  # the kept layers at the bottom, every layer above them skipped
            return Arch(tuple(kept + [path("identity", "identity")] * (layers - len(kept))))

        cuts = [self.layer_dropped(k) for k in range(1, layers)]
        for k in range(1, layers + 1):
            for f in self._elastic_ops("ffn"):
                for top in (False, True) if k < layers else (False,):
                    cuts.append(bottom([path("mha", f)] * k + ([path("mha", "identity")] if top else [])))
        heads = self.teacher.num_attention_heads
        offered = [op_spec(op).heads for op in self._elastic_ops("mha") if op_spec(op).heads]  # thinned ones
        thin = sorted({min(offered, key=lambda h: (abs(h - heads * fraction), h)) for fraction in CUT_HEAD_FRACTIONS}
                      if offered else ())
        smallest = sorted(self._elastic_ops("ffn"), key=lambda op: op_spec(op).inner or self.teacher.intermediate_size)
        for k in range(1, layers + 1):
            for h in thin:
                for f in ("identity", *smallest[:THIN_CUT_FFNS]):
                    cuts.append(bottom([path(f"mha{h}", f)] * k))
        teacher = self.teacher_arch()
        return [arch for arch in dict.fromkeys(cuts) if arch != teacher]

    def _alternating(self, width: int) -> Arch:
        ops = tuple("mha" if s % 2 == 0 else "ffn" for s in range(self.slots_per_block))
        return Arch(tuple(BlockArch(width, ops) for _ in range(self.num_blocks)))

    def validate(self, arch: Arch, *, allow_teacher: bool = False) -> None:
        """Raise :class:`SpaceError` unless ``arch`` belongs to this space.

        With ``allow_teacher``, the teacher's own width is accepted too (see :meth:`teacher_arch`). A pruned FFN,
        ``ffn{I}`` with fewer inner units than the block's ``ffn``, belongs to every space with ``ffn``: it is the
        first I units of that op (teacher cuts with a pruned top FFN are made of it).
        """
        if not isinstance(arch, Arch):
            raise TypeError(f"expected an Arch, got {type(arch).__name__}")
        if len(arch.blocks) != self.num_blocks:
            raise SpaceError(f"arch has {len(arch.blocks)} blocks, space {self.name!r} has {self.num_blocks}")
        widths = set(self.hidden_choices) | ({self.teacher.hidden_size} if allow_teacher else set())
        for n, block in enumerate(arch.blocks):
            if block.width not in widths:
                raise SpaceError(
                    f"block {n}: width {block.width} is not in hidden_choices {list(self.hidden_choices)}"
                )
            if len(block.ops) != self.slots_per_block:
                raise SpaceError(f"block {n}: has {len(block.ops)} ops, each block has {self.slots_per_block} slots")
            teacher_ops = allow_teacher and block.width == self.teacher.hidden_size
            allowed = set(self.ops) | ({"mha", "ffn"} if teacher_ops else set())
            for op in block.ops:
                inner = pruned_ffn_inner(op)
                if inner is not None and "ffn" in allowed:  # a pruned ffn: the first units of the slot's ffn
                    if inner >= self.ffn_ratio * block.width:
                        raise SpaceError(f"block {n}: {op} keeps {inner} inner units, but an ffn of width "
                                         f"{block.width} has {self.ffn_ratio * block.width}: a pruned FFN keeps fewer")
                elif op not in allowed:
                    raise SpaceError(f"block {n}: op {op!r} is not in this space's ops {list(self.ops)}")
            if self.elastic and [op_spec(op).kind for op in block.layers] not in (["mha", "ffn"], ["mha"], ["ffn"], []):
                raise SpaceError(f"block {n}: {str(block)!r} is not a layer of an elastic space: its attention, then "
                                 "its FFN, either of them skipped (identity last)")
            first_identity = block.ops.index("identity") if "identity" in block.ops else len(block.ops)
            if any(op != "identity" for op in block.ops[first_identity:]):
                raise SpaceError(
                    f"block {n}: identity ops must come last in a block ({str(block)!r}); "
                    "move them to the end, which is the same network"
                )

    def contains(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
        except SpaceError:
            return False
        return True

    # ---------------------------------------------------------------- costs

    def num_params(self, arch: Arch, *, adapters: bool | list[bool] | None = None) -> int:
        """Exact parameter count of the model :meth:`SuperNet.extract` builds for ``arch``.

        Embeddings at the first block's width, every layer, and the linear maps between blocks and to the
        teacher's width (the output every family member shares). ``adapters``: which maps the model has
        (``NasBertConfig.adapters``); None: those the extraction keeps (:attr:`Arch.adapters`); False: none
        (``drop_identity_adapters``: a teacher cut, a layer-dropped teacher).
        """
        t, w = self.teacher, arch.widths
        params = (t.max_position_embeddings + t.type_vocab_size) * w[0] + 2 * w[0]
        e = self.factorized_embedding_size
        params += t.vocab_size * e + 3 * e * w[0] + w[0] if e else t.vocab_size * w[0]
        for block in arch.blocks:
            params += sum(op_params(op, block.width, ffn_ratio=self.ffn_ratio, head_size=self.head_size) for op in block.layers)
        return params + sum(_linear_params(a, b) for a, b in self.adapter_shapes(arch, adapters))

    def flops(self, arch: Arch, seq_len: int, *, adapters: bool | list[bool] | None = None) -> int:
        """FLOPs (2 x multiply-accumulates) of the extracted model on one sequence of ``seq_len`` tokens
        (``adapters`` as :meth:`num_params`)."""
        if not _is_int(seq_len) or seq_len <= 0:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        e = self.factorized_embedding_size
        flops = 2 * seq_len * 3 * e * arch.widths[0] if e else 0  # the factorised embedding's kernel-3 convolution
        for block in arch.blocks:
            flops += sum(op_flops(op, block.width, seq_len, ffn_ratio=self.ffn_ratio, head_size=self.head_size) for op in block.layers)
        return flops + sum(2 * seq_len * a * b for a, b in self.adapter_shapes(arch, adapters))

    def adapter_shapes(self, arch: Arch, adapters: bool | list[bool] | None = None) -> list[tuple[int, int]]:
        """``(in, out)`` of every linear map between blocks and to the teacher's width that the model has
        (``adapters`` as :meth:`num_params`)."""
        keep = arch.adapters if adapters is None else adapters
        return [s for s in adapter_shapes(arch.to_dict()["blocks"], self.teacher.hidden_size, keep) if s]

    def summary(self) -> str:
        """A human-readable description: structure, path counts and the cost range."""
        t = self.teacher
        total = math.prod(self.num_paths(n) for n in range(self.num_blocks))
        lines = [
            f"search space {self.name!r}: {self.description}".rstrip(": "),
            f"  teacher       {t.name or 'built-in MiniLM-L6-H384'}: {t.num_hidden_layers} layers, "
            f"hidden {t.hidden_size}, {t.num_attention_heads} heads, FFN {t.intermediate_size}",
            f"  slots         {self.num_slots} in {self.num_blocks} blocks of {self.slots_per_block}",
            f"  widths        {', '.join(map(str, self.hidden_choices))} (head size {self.head_size}, "
            f"FFN ratio {self.ffn_ratio})",
            f"  ops           {', '.join(self.ops)}",
            *([f"  mobilebert    bottleneck heads of {self.bottleneck_head_size}, {self.bottleneck_norm}, "
               f"{self.bottleneck_act}; embeddings "
               + (f"factorised to {self.factorized_embedding_size}" if self.factorized_embedding_size else "plain")
               + f", {self.embedding_norm}"] if self._mobile_options() else []),
            f"  paths/block   {self.num_paths(0):,}",
            f"  architectures {total:,} ({total:.2e})",
        ]
        for label, arch in (("smallest", self.smallest_arch()), ("largest", self.largest_arch()),
                            ("teacher", self.teacher_arch())):
            lines.append(
                f"  {label:<13} {self.num_params(arch) / 1e6:7.2f} M params, "
                f"{self.flops(arch, 128) / 1e9:6.2f} GFLOPs @ 128 tokens  {arch}"
            )
        return "\n".join(lines)
