"""Configuration of an extracted nasbert model.

This file is copied into every exported model directory and must import nothing from nasbert.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from transformers import PretrainedConfig

LAYER_OPS = ("mha", "ffn", "sepconv3", "sepconv5", "sepconv7")
#: the kernel of each depthwise-separable convolution op
SEPCONV_KERNELS = {"sepconv3": 3, "sepconv5": 5, "sepconv7": 7}
#: ``bottleneck{B}x{N}``: a MobileBERT layer with an intra-block width of B and N stacked FFNs (1 to 4)
BOTTLENECK_OP = re.compile(r"bottleneck([1-9][0-9]*)x([1-4])")
#: ``ffn{I}``: an FFN layer pruned to its first I inner units (an ``ffn`` layer of width w has ffn_ratio * w)
PRUNED_FFN_OP = re.compile(r"ffn([1-9][0-9]*)")
#: ``mha{h}``: an attention layer with h heads (of ``head_size``) at the block's width; ``mha`` has width / head_size
PRUNED_MHA_OP = re.compile(r"mha([1-9][0-9]*)")
NORMS = ("layernorm", "nonorm")
BOTTLENECK_ACTS = ("relu", "gelu")
#: how a sequence classifier reads a pair of texts (``NasBertConfig.pair_encoding``)
PAIR_ENCODINGS = ("cross", "bi")


def bottleneck_shape(op: str) -> tuple[int, int] | None:
    """``(intra width, stacked FFNs)`` of a ``bottleneck{B}x{N}`` op; None for any other op name."""
    match = BOTTLENECK_OP.fullmatch(op)
    return (int(match.group(1)), int(match.group(2))) if match else None


def pruned_ffn_inner(op: str) -> int | None:
    """The inner units of a pruned ``ffn{I}`` op; None for any other op name (``ffn`` included)."""
    match = PRUNED_FFN_OP.fullmatch(op)
    return int(match.group(1)) if match else None


def pruned_mha_heads(op: str) -> int | None:
    """The heads of a pruned ``mha{h}`` op; None for any other op name (``mha`` included)."""
    match = PRUNED_MHA_OP.fullmatch(op)
    return int(match.group(1)) if match else None


def is_layer_op(op: str) -> bool:
    return (op in LAYER_OPS or bottleneck_shape(op) is not None or pruned_ffn_inner(op) is not None
            or pruned_mha_heads(op) is not None)


class OpSpec(NamedTuple):
    """An op name read once: its kind (``identity``, ``mha``, ``ffn``, ``sepconv``, ``bottleneck``) and the numbers
    its name carries. Every place that acts on an op (costs, layers, supernet slots) dispatches on ``kind``."""

    kind: str
    kernel: int = 0  # sepconv: the depthwise kernel
    intra: int = 0  # bottleneck: the intra-block width
    num_ffn: int = 0  # bottleneck: stacked FFNs
    inner: int = 0  # ffn: the inner units of a pruned ``ffn{I}``; 0 for ``ffn`` (ffn_ratio x width)
    heads: int = 0  # mha: the heads of a pruned ``mha{h}``; 0 for ``mha`` (width / head_size)

    def ffn_inner(self, width: int, ffn_ratio: int) -> int:
        """The inner units of an ``ffn`` or ``ffn{I}`` layer of ``width``."""
        return self.inner or ffn_ratio * width

    def attention_inner(self, width: int, head_size: int) -> int:
        """The width of the queries, keys and values of an ``mha`` or ``mha{h}`` layer of ``width``."""
        return self.heads * head_size if self.heads else width


def op_spec(op: str) -> OpSpec:
    """The :class:`OpSpec` of an op name; ValueError for a name that is no op.

    >>> op_spec("sepconv5"), op_spec("bottleneck128x4").num_ffn, op_spec("ffn768").inner, op_spec("mha4").heads
    (OpSpec(kind='sepconv', kernel=5, intra=0, num_ffn=0, inner=0, heads=0), 4, 768, 4)
    """
    if op in ("identity", "mha", "ffn"):
        return OpSpec(op)
    if op in SEPCONV_KERNELS:
        return OpSpec("sepconv", kernel=SEPCONV_KERNELS[op])
    shape = bottleneck_shape(op)
    if shape is not None:
        return OpSpec("bottleneck", intra=shape[0], num_ffn=shape[1])
    inner = pruned_ffn_inner(op)
    if inner is not None:
        return OpSpec("ffn", inner=inner)
    heads = pruned_mha_heads(op)
    if heads is not None:
        return OpSpec("mha", heads=heads)
    raise ValueError(f"unknown op {op!r}; known: {', '.join(LAYER_OPS)}, ffn{{I}} (I inner units), mha{{h}} "
                     "(h heads), bottleneck{B}x{N} (N = 1..4), identity")


def adapter_shapes(blocks: list[dict], hidden_size: int, adapters) -> list[tuple[int, int] | None]:
    """The encoder's linear maps: one before each block after the first, and one to the output width
    (``len(blocks)`` entries), each ``(in, out)`` or None where the model has none.

    ``adapters``: True (every map), False (none) or one bool per map. A map that is left out is folded into the
    next one, so a map reads the width of the last map before it (or of the embeddings): an extracted model
    leaves out the map into a block with no layers, and the maps around it become one.

    >>> adapter_shapes([{"width": 256, "ops": ["mha"]}, {"width": 128, "ops": ["identity"]}], 384, [False, True])
    [None, (256, 384)]
    """
    widths = [b["width"] for b in blocks]
    present = [adapters] * len(blocks) if isinstance(adapters, bool) else list(adapters)
    shapes, width = [], widths[0] if widths else hidden_size
    for n, keep in enumerate(present):
        target = widths[n + 1] if n + 1 < len(widths) else hidden_size
        shapes.append((width, target) if keep else None)
        width = target if keep else width
        has_layers = n + 1 < len(blocks) and any(op != "identity" for op in blocks[n + 1]["ops"])
        if (has_layers or n + 1 == len(blocks)) and width != target:
            raise ValueError(f"adapters: {adapters!r} leaves a {width}-wide state where "
                             f"{'block ' + str(n + 1) if n + 1 < len(blocks) else 'the output'} needs {target}: "
                             "keep the adapter before every block with layers whose width changes, and the output "
                             "adapter unless the last width is hidden_size")
    return shapes


class NasBertConfig(PretrainedConfig):
    r"""Configuration of a :class:`NasBertModel`: a BERT whose layers are chosen per position.

    Args:
        blocks: one ``{"width": int, "ops": [op, ...]}`` per block; ops are ``mha``, ``ffn``, ``sepconv3``,
            ``sepconv5``, ``sepconv7``, ``ffn{I}`` (an FFN pruned to I inner units), ``mha{h}`` (an attention with
            h heads), ``bottleneck{B}x{N}`` or
            ``identity`` (skipped).
        hidden_size: width of the model's output (the teacher's width; the last block is projected to it).
        head_size: width of one attention head; an ``mha`` layer of width ``w`` has ``w / head_size`` heads.
        ffn_ratio: an ``ffn`` layer of width ``w`` has ``ffn_ratio * w`` inner units.
        classifier_pooling: what the sequence classifier's pooler reads: ``"cls"`` (the first token, as BERT) or
            ``"mean"`` (the mean over real tokens; suits models whose last layers are local convolutions).
        bottleneck_head_size: width of one attention head inside a ``bottleneck{B}x{N}`` layer (B / head size
            heads; MobileBERT: 128 / 32 = 4).
        bottleneck_norm: ``"nonorm"`` (element-wise scale and shift, MobileBERT's) or ``"layernorm"``, in
            bottleneck layers.
        bottleneck_act: ``"relu"`` (MobileBERT's) or ``"gelu"``, in the FFNs of bottleneck layers.
        factorized_embedding_size: None for BERT's embeddings at the first block's width; an integer ``e`` for
            MobileBERT's factorised embedding: an ``e``-wide token table lifted to the first block's width by a
            kernel-3 convolution over neighbouring tokens.
        embedding_norm: ``"layernorm"`` or ``"nonorm"``, after the embeddings.
        reference_size: RefBERT (arXiv 2106.08898): the width of a teacher's pre-computed states of reference
            samples, which the first ``mha`` layer attends over (joined to its keys and values); the model then
            needs ``reference_states`` and ``reference_mask`` inputs. None (the default): no references.
        pair_encoding: how the sequence classifier reads a pair of texts: ``"cross"`` (the default, as BERT: one
            sequence ``[CLS] a [SEP] b [SEP]``) or ``"bi"`` (Sentence-BERT's classifier, arXiv 1908.10084: each
            text is encoded apart, ``input_ids`` / ``attention_mask`` and ``input_ids_b`` / ``attention_mask_b``,
            pooled to ``u`` and ``v``, and the classifier reads ``[u, v, |u - v|, u * v]``).
    """

    model_type = "nasbert"

    def __init__(
        self,
        blocks: list[dict] | None = None,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        head_size: int = 64,
        ffn_ratio: int = 4,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        classifier_dropout: float | None = None,
        classifier_pooling: str = "cls",
        bottleneck_head_size: int = 32,
        bottleneck_norm: str = "nonorm",
        bottleneck_act: str = "relu",
        factorized_embedding_size: int | None = None,
        embedding_norm: str = "layernorm",
        reference_size: int | None = None,
        adapters: bool | list[bool] = True,
        pair_encoding: str = "cross",
        **kwargs,
    ):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.blocks = [{"width": int(b["width"]), "ops": list(b["ops"])} for b in (blocks or [])]
        for i, block in enumerate(self.blocks):
            for op in block["ops"]:
                if op != "identity" and not is_layer_op(op):
                    raise ValueError(f"blocks[{i}]: unknown op {op!r}; known: {', '.join(LAYER_OPS)}, "
                                     "ffn{I}, bottleneck{B}x{N} (N = 1..4), identity")
                inner = pruned_ffn_inner(op)
                if inner is not None and inner > ffn_ratio * block["width"]:
                    raise ValueError(f"blocks[{i}]: {op} keeps {inner} inner units, but an ffn layer of width "
                                     f"{block['width']} has {ffn_ratio * block['width']} (ffn_ratio {ffn_ratio}): a "
                                     "pruned FFN keeps at most that many")
                shape = bottleneck_shape(op)
                if shape and (shape[0] > block["width"] or shape[0] % bottleneck_head_size):
                    raise ValueError(f"blocks[{i}]: {op} needs an intra width ({shape[0]}) no wider than the block "
                                     f"({block['width']}) and a multiple of bottleneck_head_size "
                                     f"({bottleneck_head_size})")
            if "mha" in block["ops"] and block["width"] % head_size:
                raise ValueError(f"blocks[{i}]: width {block['width']} is not a multiple of head_size {head_size}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.head_size = head_size
        self.ffn_ratio = ffn_ratio
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.classifier_dropout = classifier_dropout
        if classifier_pooling not in ("cls", "mean"):
            raise ValueError(f"classifier_pooling must be 'cls' or 'mean', got {classifier_pooling!r}")
        self.classifier_pooling = classifier_pooling
        for key, value, allowed in (("bottleneck_norm", bottleneck_norm, NORMS),
                                    ("embedding_norm", embedding_norm, NORMS),
                                    ("bottleneck_act", bottleneck_act, BOTTLENECK_ACTS)):
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        self.bottleneck_head_size = bottleneck_head_size
        self.bottleneck_norm = bottleneck_norm
        self.bottleneck_act = bottleneck_act
        self.factorized_embedding_size = factorized_embedding_size
        self.embedding_norm = embedding_norm
        if reference_size is not None:
            if isinstance(reference_size, bool) or not isinstance(reference_size, int) or reference_size < 1:
                raise ValueError(f"reference_size must be a positive integer or None, got {reference_size!r}")
            if self.blocks and not any("mha" in b["ops"] for b in self.blocks):
                raise ValueError("reference_size is set, but references need an mha layer (RefBERT joins them to "
                                 "the first mha layer's keys and values) and this model has none: use a model "
                                 "with an mha layer, or fine-tune without references")
        self.reference_size = reference_size
        if pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"pair_encoding must be one of {', '.join(PAIR_ENCODINGS)}, got {pair_encoding!r}")
        if pair_encoding == "bi" and reference_size is not None:
            raise ValueError("pair_encoding 'bi' encodes each text of a pair apart and RefBERT's references join "
                             "one sequence's attention: use one of them")
        self.pair_encoding = pair_encoding
        if not isinstance(adapters, bool) and not (
                isinstance(adapters, (list, tuple)) and len(adapters) == len(self.blocks)
                and all(isinstance(a, bool) for a in adapters)):
            raise ValueError(f"adapters must be true, false or one true/false per block ({len(self.blocks)}), "
                             f"got {adapters!r}")
        if adapters is False and any(b["width"] != hidden_size for b in self.blocks):
            raise ValueError(f"adapters: false needs every block at the output width ({hidden_size}); widths "
                             f"{[b['width'] for b in self.blocks]} need the adapters between them")
        if not isinstance(adapters, bool):
            adapters = list(adapters)
            adapters = adapters[0] if len(set(adapters)) == 1 else adapters
        adapter_shapes(self.blocks, hidden_size, adapters)  # raises where a left-out map breaks the widths
        #: the linear maps between blocks and to the output (:func:`adapter_shapes`): True (all), False (none, as
        #: in a plain BERT: a layer-dropped teacher), or one bool per map (an extracted model leaves out the maps
        #: into blocks with no layers)
        self.adapters = adapters

    @property
    def embedding_size(self) -> int:
        """Width of the token table: the factorised size, or the first block's width."""
        if self.factorized_embedding_size:
            return self.factorized_embedding_size
        return self.blocks[0]["width"] if self.blocks else self.hidden_size

    @property
    def num_hidden_layers(self) -> int:
        """Non-identity layers in the whole model."""
        return sum(op != "identity" for b in self.blocks for op in b["ops"])
