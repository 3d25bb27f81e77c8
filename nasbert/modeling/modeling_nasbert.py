"""Modeling code of an extracted nasbert model.

The whole forward pass reads top to bottom here. The functional kernels at the top (``attention``,
``feed_forward``, ``sepconv``) are the single definition of each op: the supernet calls them with sliced
weights, the extracted model with its own. This file is copied into every exported model directory, so it
imports nothing from nasbert and loads with ``trust_remote_code=True`` on a machine without it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

from .configuration_nasbert import NasBertConfig, adapter_shapes, op_spec


# --------------------------------------------------------------------------------------------------------------
# Functional kernels, shared with the supernet
# --------------------------------------------------------------------------------------------------------------


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) of 1 = keep, 0 = pad  ->  (B, 1, 1, T) of 0 / a large negative number, added to the scores."""
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def attention(
    x: torch.Tensor,
    additive_mask: torch.Tensor,
    q_w: torch.Tensor, q_b: torch.Tensor,
    k_w: torch.Tensor, k_b: torch.Tensor,
    v_w: torch.Tensor, v_b: torch.Tensor,
    o_w: torch.Tensor, o_b: torch.Tensor,
    *,
    head_size: int,
    dropout: float,
    training: bool,
    memory: torch.Tensor | None = None,
    memory_additive_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head self-attention (BERT's), without the residual and LayerNorm.

    With ``memory`` (B, R, w), RefBERT's projected reference states, the keys and values are those of
    ``[x; memory]`` through the same key / value projections, the queries only x's; ``memory_additive_mask``
    (B, 1, 1, R; as from :func:`additive_attention_mask`) masks padded memory tokens.
    """
    kv = x
    if memory is not None:
        if memory_additive_mask is None:
            memory_additive_mask = memory.new_zeros(x.shape[0], 1, 1, memory.shape[1])
        kv = torch.cat([x, memory], dim=1)  # (B, T + R, w)
        additive_mask = torch.cat([additive_mask, memory_additive_mask], dim=-1)  # (B, 1, 1, T + R)
    context = multi_head_attention(F.linear(x, q_w, q_b), F.linear(kv, k_w, k_b), F.linear(kv, v_w, v_b),
                                   additive_mask, head_size=head_size, dropout=dropout, training=training)
    return F.linear(context, o_w, o_b)  # (B, T, w)


def feed_forward(
    x: torch.Tensor, i_w: torch.Tensor, i_b: torch.Tensor, o_w: torch.Tensor, o_b: torch.Tensor, *, act
) -> torch.Tensor:
    """BERT's FFN (dense -> activation -> dense), without the residual and LayerNorm."""
    return F.linear(act(F.linear(x, i_w, i_b)), o_w, o_b)  # (B, T, w) -> (B, T, r*w) -> (B, T, w)


def sepconv(
    x: torch.Tensor,
    keep: torch.Tensor,
    dw_w: torch.Tensor, dw_b: torch.Tensor,
    pw_w: torch.Tensor, pw_b: torch.Tensor,
    *,
    act,
) -> torch.Tensor:
    """Separable convolution over the sequence: depthwise (kernel k, 'same' padding) -> pointwise -> activation.

    ``keep`` (B, T) zeroes padded positions first, so that padding never leaks into real tokens.
    """
    width, _, kernel = dw_w.shape  # (w, 1, k)
    h = (x * keep[..., None].to(x.dtype)).transpose(1, 2)  # (B, w, T)
    h = F.conv1d(h, dw_w, dw_b, padding=kernel // 2, groups=width).transpose(1, 2)  # (B, T, w)
    return act(F.linear(h, pw_w, pw_b))


def embed(
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    word: torch.Tensor, position: torch.Tensor, token_type: torch.Tensor,
    ln_w: torch.Tensor, ln_b: torch.Tensor,
    *,
    eps: float,
    dropout: float,
    training: bool,
    lift_w: torch.Tensor | None = None,
    lift_b: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    norm: str = "layernorm",
) -> torch.Tensor:
    """BERT's embeddings: word + absolute position + token type, then LayerNorm (or NoNorm).

    With ``lift_w`` (w, e, 3) the word table is MobileBERT's factorised one: e-wide token vectors, lifted to
    width w by a kernel-3 convolution over each token and its two neighbours (padded positions, ``keep`` = 0,
    are zeroed first, as the sequence ends are).
    """
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]  # (1, T)
    tokens = F.embedding(input_ids, word)  # (B, T, e)
    if lift_w is not None:
        if keep is not None:
            tokens = tokens * keep[..., None].to(tokens.dtype)
        tokens = F.conv1d(tokens.transpose(1, 2), lift_w, lift_b, padding=1).transpose(1, 2)  # (B, T, w)
    h = tokens + F.embedding(positions, position) + F.embedding(token_type_ids, token_type)
    h = normalize(h, ln_w, ln_b, kind=norm, eps=eps)  # (B, T, w)
    return F.dropout(h, p=dropout, training=training)


def normalize(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, kind: str, eps: float) -> torch.Tensor:
    """LayerNorm, or MobileBERT's NoNorm (``kind="nonorm"``): an element-wise scale and shift, no statistics."""
    if kind == "nonorm":
        return x * weight + bias
    return F.layer_norm(x, (weight.shape[0],), weight, bias, eps)  # a static shape keeps ONNX export simple


def multi_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive_mask: torch.Tensor, *, head_size: int,
    dropout: float, training: bool,
) -> torch.Tensor:
    """Scaled dot-product attention of already-projected queries (B, T, width) over keys and values (B, S, width)
    (S = T, or more with RefBERT's memory)."""
    B, T, width = q.shape
    nh = width // head_size
    v = v.reshape(B, -1, nh, head_size).transpose(1, 2)  # (B, nh, S, hs)
    probs = F.dropout(attention_probs(q, k, additive_mask, head_size=head_size), p=dropout, training=training)
    return torch.matmul(probs, v).transpose(1, 2).reshape(B, T, width)  # (B, T, width)


def attention_probs(q: torch.Tensor, k: torch.Tensor, additive_mask: torch.Tensor, *, head_size: int) -> torch.Tensor:
    """The attention distributions (B, heads, T, S) of already-projected queries (B, T, width) over keys
    (B, S, width): the one softmax of every attention op (progressive transfer matches them to the teacher's)."""
    B, T, width = q.shape
    nh = width // head_size
    q, k = (t.reshape(B, -1, nh, head_size).transpose(1, 2) for t in (q, k))  # (B, nh, T or S, hs)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_size) + additive_mask  # (B, nh, T, S)
    return scores.softmax(dim=-1)


def bottleneck(
    x: torch.Tensor,
    additive_mask: torch.Tensor,
    p: dict[str, torch.Tensor],
    *,
    num_ffn: int,
    head_size: int,
    norm: str,
    act,
    eps: float,
    dropout: float,
    attention_dropout: float,
    training: bool,
) -> torch.Tensor:
    """A MobileBERT layer (Sun et al., 2020), residual included; ``p`` holds its weights by parameter name.

    The wide input x (B, T, w) is projected into the b-wide bottleneck twice: once for the residual stream
    (``bottleneck.input``) and once, shared, for the attention's queries and keys (``bottleneck.attention``);
    the values come from x itself. Attention and ``num_ffn`` stacked FFNs run at width b, each with a residual
    and a norm; ``output`` lifts the result back to w, added to x.
    """

    def dense(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, p[f"{name}.dense.weight"], p[f"{name}.dense.bias"])

    def norm_of(name: str, h: torch.Tensor) -> torch.Tensor:
        return normalize(h, p[f"{name}.norm.weight"], p[f"{name}.norm.bias"], kind=norm, eps=eps)

    stream = norm_of("bottleneck.input", dense("bottleneck.input", x))  # (B, T, b)
    shared = norm_of("bottleneck.attention", dense("bottleneck.attention", x))  # (B, T, b)
    q = F.linear(shared, p["attention.self.query.weight"], p["attention.self.query.bias"])
    k = F.linear(shared, p["attention.self.key.weight"], p["attention.self.key.bias"])
    v = F.linear(x, p["attention.self.value.weight"], p["attention.self.value.bias"])  # (B, T, b) from the wide x
    context = multi_head_attention(q, k, v, additive_mask, head_size=head_size, dropout=attention_dropout,
                                   training=training)
    h = norm_of("attention.output", dense("attention.output", context) + stream)  # (B, T, b)
    for i in range(num_ffn):
        inner = act(dense(f"ffn.{i}.intermediate", h))  # (B, T, r*b)
        h = norm_of(f"ffn.{i}.output", dense(f"ffn.{i}.output", inner) + h)  # (B, T, b)
    out = F.dropout(dense("output", h), p=dropout, training=training)  # (B, T, w)
    return norm_of("output", out + x)


def residual_norm(
    x: torch.Tensor, branch: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, *, eps: float, dropout: float,
    training: bool,
) -> torch.Tensor:
    """Post-LN residual, as in BERT: LayerNorm(x + dropout(branch))."""
    h = x + F.dropout(branch, p=dropout, training=training)
    return F.layer_norm(h, (ln_w.shape[0],), ln_w, ln_b, eps)


# --------------------------------------------------------------------------------------------------------------
# Modules of the extracted model (Hugging Face names, so teacher weights map one to one)
# --------------------------------------------------------------------------------------------------------------


class Norm(nn.Module):
    """LayerNorm or NoNorm parameters (``weight``, ``bias``: the names of ``nn.LayerNorm``'s)."""

    def __init__(self, width: int, kind: str, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.kind = kind
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.weight, self.bias, kind=self.kind, eps=self.eps)


class NasBertEmbeddings(nn.Module):
    def __init__(self, config: NasBertConfig):
        super().__init__()
        width = config.blocks[0]["width"] if config.blocks else config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        if config.factorized_embedding_size:  # MobileBERT: a narrow table lifted by a kernel-3 convolution
            self.embedding_transformation = nn.Conv1d(config.embedding_size, width, 3, padding=1)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, width)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, width)
        self.LayerNorm = Norm(width, config.embedding_norm, config.layer_norm_eps)
        self.dropout_prob = config.hidden_dropout_prob

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        lift = getattr(self, "embedding_transformation", None)
        return embed(
            input_ids, token_type_ids,
            self.word_embeddings.weight, self.position_embeddings.weight, self.token_type_embeddings.weight,
            self.LayerNorm.weight, self.LayerNorm.bias,
            eps=self.LayerNorm.eps, dropout=self.dropout_prob, training=self.training,
            lift_w=None if lift is None else lift.weight, lift_b=None if lift is None else lift.bias,
            keep=keep, norm=self.LayerNorm.kind,
        )


class NasBertSelfAttention(nn.Module):
    def __init__(self, width: int, inner: int):
        super().__init__()
        self.query = nn.Linear(width, inner)
        self.key = nn.Linear(width, inner)
        self.value = nn.Linear(width, inner)


class NasBertDenseNorm(nn.Module):
    """A dense layer followed by the residual LayerNorm (BERT's ``*.output``)."""

    def __init__(self, n_in: int, width: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(n_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)


class NasBertAttention(nn.Module):
    """An ``mha`` layer of ``inner`` query / key / value channels (``OpSpec.attention_inner``: ``width``, or
    h x head_size for ``mha{h}``)."""

    def __init__(self, config: NasBertConfig, width: int, inner: int):
        super().__init__()
        self.self = NasBertSelfAttention(width, inner)
        self.output = NasBertDenseNorm(inner, width, config.layer_norm_eps)
        self.head_size = config.head_size
        self.attention_dropout = config.attention_probs_dropout_prob
        self.hidden_dropout = config.hidden_dropout_prob

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor, keep: torch.Tensor,
                memory: torch.Tensor | None = None, memory_additive_mask: torch.Tensor | None = None) -> torch.Tensor:
        s, o = self.self, self.output
        branch = attention(
            x, additive_mask,
            s.query.weight, s.query.bias, s.key.weight, s.key.bias, s.value.weight, s.value.bias,
            o.dense.weight, o.dense.bias,
            head_size=self.head_size, dropout=self.attention_dropout, training=self.training,
            memory=memory, memory_additive_mask=memory_additive_mask,
        )
        return residual_norm(x, branch, o.LayerNorm.weight, o.LayerNorm.bias, eps=o.LayerNorm.eps,
                             dropout=self.hidden_dropout, training=self.training)


class NasBertFeedForward(nn.Module):
    """An ``ffn`` layer of ``inner`` units (``OpSpec.ffn_inner``: ``ffn_ratio * width``, or I for ``ffn{I}``)."""

    def __init__(self, config: NasBertConfig, width: int, inner: int):
        super().__init__()
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(width, inner)
        self.output = NasBertDenseNorm(inner, width, config.layer_norm_eps)
        self.act = ACT2FN[config.hidden_act]
        self.hidden_dropout = config.hidden_dropout_prob

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        i, o = self.intermediate.dense, self.output
        branch = feed_forward(x, i.weight, i.bias, o.dense.weight, o.dense.bias, act=self.act)
        return residual_norm(x, branch, o.LayerNorm.weight, o.LayerNorm.bias, eps=o.LayerNorm.eps,
                             dropout=self.hidden_dropout, training=self.training)


class NasBertSepConv(nn.Module):
    """A ``sepconv{3,5,7}`` layer."""

    def __init__(self, config: NasBertConfig, width: int, kernel_size: int):
        super().__init__()
        self.depthwise = nn.Conv1d(width, width, kernel_size, padding=kernel_size // 2, groups=width)
        self.pointwise = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.act = ACT2FN[config.hidden_act]
        self.hidden_dropout = config.hidden_dropout_prob

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        branch = sepconv(x, keep, self.depthwise.weight, self.depthwise.bias, self.pointwise.weight,
                         self.pointwise.bias, act=self.act)
        return residual_norm(x, branch, self.LayerNorm.weight, self.LayerNorm.bias, eps=self.LayerNorm.eps,
                             dropout=self.hidden_dropout, training=self.training)


class NasBertDense(nn.Module):
    """A dense layer and, optionally, its norm (``dense``, ``norm``)."""

    def __init__(self, n_in: int, n_out: int, norm: str | None = None, eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        if norm is not None:
            self.norm = Norm(n_out, norm, eps)


class NasBertBottleneck(nn.Module):
    """A ``bottleneck{B}x{N}`` layer: MobileBERT's bottleneck block at inter width w, intra width B, N FFNs."""

    def __init__(self, config: NasBertConfig, width: int, intra: int, num_ffn: int):
        super().__init__()
        norm, eps, inner = config.bottleneck_norm, config.layer_norm_eps, config.ffn_ratio * intra
        self.bottleneck = nn.Module()
        self.bottleneck.input = NasBertDense(width, intra, norm, eps)
        self.bottleneck.attention = NasBertDense(width, intra, norm, eps)  # shared by queries and keys
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        self.attention.self.query = nn.Linear(intra, intra)
        self.attention.self.key = nn.Linear(intra, intra)
        self.attention.self.value = nn.Linear(width, intra)
        self.attention.output = NasBertDense(intra, intra, norm, eps)
        self.ffn = nn.ModuleList()
        for _ in range(num_ffn):
            ffn = nn.Module()
            ffn.intermediate = NasBertDense(intra, inner)
            ffn.output = NasBertDense(inner, intra, norm, eps)
            self.ffn.append(ffn)
        self.output = NasBertDense(intra, width, norm, eps)
        self.num_ffn = num_ffn
        self.head_size = config.bottleneck_head_size
        self.norm = norm
        self.eps = eps
        self.act = ACT2FN[config.bottleneck_act]
        self.hidden_dropout = config.hidden_dropout_prob
        self.attention_dropout = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.compute(x, additive_mask, dict(self.named_parameters()), self.num_ffn)

    def compute(self, x: torch.Tensor, additive_mask: torch.Tensor, params: dict[str, torch.Tensor],
                num_ffn: int) -> torch.Tensor:
        """This layer's settings on ``params`` (its own weights, or the supernet's slices of a wider layer)."""
        return bottleneck(
            x, additive_mask, params, num_ffn=num_ffn, head_size=self.head_size, norm=self.norm, act=self.act,
            eps=self.eps, dropout=self.hidden_dropout, attention_dropout=self.attention_dropout,
            training=self.training,
        )


def build_layer(config: NasBertConfig, op: str, width: int) -> nn.Module:
    spec = op_spec(op)
    if spec.kind == "mha":
        return NasBertAttention(config, width, spec.attention_inner(width, config.head_size))
    if spec.kind == "ffn":
        return NasBertFeedForward(config, width, spec.ffn_inner(width, config.ffn_ratio))
    if spec.kind == "sepconv":
        return NasBertSepConv(config, width, spec.kernel)
    if spec.kind == "bottleneck":
        return NasBertBottleneck(config, width, spec.intra, spec.num_ffn)
    raise ValueError(f"{op!r} is no layer")


class NasBertEncoder(nn.Module):
    """The layers of every block, a linear adapter at each block boundary, and one to the output width."""

    def __init__(self, config: NasBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            build_layer(config, op, b["width"]) for b in config.blocks for op in b["ops"] if op != "identity"
        )
        self.layers_per_block = [sum(op != "identity" for op in b["ops"]) for b in config.blocks]
        shapes = adapter_shapes(config.blocks, config.hidden_size, getattr(config, "adapters", True))
        maps = [nn.Linear(*shape) if shape else nn.Identity() for shape in shapes]
        self.adapters = nn.ModuleList(maps[:-1])  # into blocks 1.. (Identity: none, as in a plain BERT)
        self.output_adapter = maps[-1]
        ops = [op for b in config.blocks for op in b["ops"] if op != "identity"]
        # RefBERT: the first mha layer also attends over the reference states (None: no references)
        self.reference_layer = ops.index("mha") if getattr(config, "reference_size", None) else None

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor, keep: torch.Tensor,
                memory: torch.Tensor | None = None, memory_additive_mask: torch.Tensor | None = None) -> torch.Tensor:
        start = 0
        for n, count in enumerate(self.layers_per_block):
            if n > 0:
                h = self.adapters[n - 1](h)  # (B, T, w[n-1]) -> (B, T, w[n])
            for i, layer in enumerate(self.layer[start : start + count], start):
                if memory is not None and i == self.reference_layer:
                    h = layer(h, additive_mask, keep, memory, memory_additive_mask)
                else:
                    h = layer(h, additive_mask, keep)
            start += count
        return self.output_adapter(h)  # (B, T, hidden_size)


class NasBertPreTrainedModel(PreTrainedModel):
    config_class = NasBertConfig
    base_model_prefix = "nasbert"
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        super()._init_weights(module)


class NasBertModel(NasBertPreTrainedModel):
    """The backbone: embeddings -> layers of each block (adapters between blocks) -> output adapter.

    Returns ``last_hidden_state`` of shape (B, T, ``config.hidden_size``).

    With ``config.reference_size`` (RefBERT), ``forward`` needs ``reference_states`` (B, R, reference_size):
    a teacher's pre-computed states of a reference sample per input (``nasbert.ReferencePool.lookup``),
    and ``reference_mask`` (B, R) (1 = real, 0 = padding; default all real). ``reference_proj`` maps them to the
    width of the first ``mha`` layer, whose keys and values they join.
    """

    def __init__(self, config: NasBertConfig):
        super().__init__(config)
        if not config.blocks:
            raise ValueError("NasBertConfig.blocks is empty: a model needs at least one block")
        self.embeddings = NasBertEmbeddings(config)
        self.encoder = NasBertEncoder(config)
        if getattr(config, "reference_size", None):
            width = next(b["width"] for b in config.blocks if "mha" in b["ops"])  # the first mha layer's
            self.reference_proj = nn.Linear(config.reference_size, width)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        reference_states: torch.Tensor | None = None,
        reference_mask: torch.Tensor | None = None,
        **kwargs,
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        h = self.embeddings(input_ids, token_type_ids, attention_mask)  # (B, T, w0)
        memory, memory_mask = self._references(reference_states, reference_mask, h.dtype, h.shape[0])
        h = self.encoder(h, additive_attention_mask(attention_mask, h.dtype), attention_mask, memory, memory_mask)
        if return_dict is False:
            return (h,)
        return BaseModelOutput(last_hidden_state=h)

    def _references(self, states: torch.Tensor | None, mask: torch.Tensor | None, dtype: torch.dtype, batch: int):
        """RefBERT's memory for the first mha layer: projected states (B, R, w) and their additive mask."""
        size = getattr(self.config, "reference_size", None)
        if size is None:
            if states is not None:
                raise ValueError("reference_states given, but this model takes no references "
                                 "(config.reference_size is None): fine-tune it with references to use them")
            return None, None
        if states is None:
            raise ValueError(f"this model was trained with reference samples (config.reference_size={size}): pass "
                             "reference_states (B, R, reference_size) and reference_mask (B, R), e.g. from "
                             "nasbert.ReferencePool.load(model_dir / 'references').lookup(input_ids, "
                             "attention_mask)")
        if states.dim() != 3 or states.shape[-1] != size or states.shape[0] != batch:
            raise ValueError(f"reference_states must be (batch={batch}, references, {size}), got "
                             f"{tuple(states.shape)}")
        if mask is None:
            mask = torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
        memory = self.reference_proj(states.to(dtype))  # (B, R, w)
        return memory, additive_attention_mask(mask, dtype)  # (B, R, w), (B, 1, 1, R)


def _classification_loss(config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of ``config.problem_type``; where it is not set, inferred from the labels (as transformers does)
    without writing it into the config."""
    problem_type = config.problem_type
    if problem_type is None:
        if config.num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1)) if config.num_labels == 1 \
            else F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class NasBertForSequenceClassification(NasBertPreTrainedModel):
    """Backbone + pooler (dense + tanh on the first token, or on the mean of the real tokens with
    ``config.classifier_pooling = "mean"``) + classifier; regression when ``num_labels == 1``.

    With ``config.pair_encoding = "bi"`` a pair's two texts are encoded apart (``input_ids`` and ``input_ids_b``),
    each pooled as above without the dense layer (``u``, ``v``), and the classifier reads ``[u, v, |u - v|,
    u * v]`` (Sentence-BERT's classification objective)."""

    def __init__(self, config: NasBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nasbert = NasBertModel(config)
        self.bi = getattr(config, "pair_encoding", "cross") == "bi"
        if not self.bi:
            self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size * (4 if self.bi else 1), config.num_labels)
        self.post_init()

    def _summary(self, input_ids, attention_mask, token_type_ids=None, **references) -> torch.Tensor:
        h = self.nasbert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         **references).last_hidden_state
        if getattr(self.config, "classifier_pooling", "cls") == "mean":
            keep = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).unsqueeze(-1).to(h.dtype)
            return (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # (B, H): mean over real tokens
        return h[:, 0]  # (B, H): the [CLS] token

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, return_dict=None,
                reference_states=None, reference_mask=None, input_ids_b=None, attention_mask_b=None, **kwargs):
        if self.bi:
            if input_ids_b is None:
                raise ValueError("this classifier encodes a pair's texts apart (pair_encoding 'bi'): pass the second "
                                 "text as input_ids_b (and attention_mask_b)")
            u = self._summary(input_ids, attention_mask)  # (B, H)
            v = self._summary(input_ids_b, attention_mask_b)  # (B, H)
            features = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)  # (B, 4H)
        else:
            summary = self._summary(input_ids, attention_mask, token_type_ids, reference_states=reference_states,
                                    reference_mask=reference_mask)
            features = torch.tanh(self.pooler(summary))  # (B, H)
        logits = self.classifier(self.dropout(features))  # (B, num_labels)
        loss = _classification_loss(self.config, logits, labels) if labels is not None else None
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class NasBertForMaskedLM(NasBertPreTrainedModel):
    """Backbone + MLM head. The decoder reuses the word embeddings (tied by construction): the head maps the
    output back to the embedding width first, so a narrow model keeps a narrow, shared vocabulary matrix."""

    def __init__(self, config: NasBertConfig):
        super().__init__(config)
        self.nasbert = NasBertModel(config)
        self.transform = nn.Linear(config.hidden_size, config.embedding_size)
        self.transform_act = ACT2FN[config.hidden_act]
        self.transform_norm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.decoder_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            nn.init.zeros_(self.decoder_bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, return_dict=None,
                reference_states=None, reference_mask=None, **kwargs):
        h = self.nasbert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         reference_states=reference_states, reference_mask=reference_mask).last_hidden_state
        h = self.transform_norm(self.transform_act(self.transform(h)))  # (B, T, e)
        logits = F.linear(h, self.nasbert.embeddings.word_embeddings.weight, self.decoder_bias)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1), ignore_index=-100)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return MaskedLMOutput(loss=loss, logits=logits)
