"""Elastic ops: each holds the weights of its widest version and hands out prefix slices.

Every op has one ``sliced(...)`` method that returns its weights at a given width, keyed by the parameter
names of the matching layer of the extracted model (``nasbert.modeling``). ``forward`` runs the shared kernel
on that slice and extraction copies that slice, so the two cannot drift apart.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.configuration_nasbert import NasBertConfig, op_spec
from ..modeling.modeling_nasbert import (NasBertBottleneck, attention, attention_probs, embed, feed_forward,
                                         normalize, residual_norm, sepconv)
from ..space import MAX_KERNEL

Tensors = dict[str, torch.Tensor]


def prefix(weight: torch.Tensor, out_features: int | None = None, in_features: int | None = None) -> torch.Tensor:
    """The one slicing helper: the first ``out_features`` rows and ``in_features`` columns (None = all)."""
    if weight.dim() == 1:
        return weight[:out_features]
    return weight[:out_features, :in_features]


class ElasticEmbeddings(nn.Module):
    """BERT's embeddings at any width; with ``factorized`` = e, MobileBERT's: an e-wide token table (all widths
    share it) lifted by a kernel-3 convolution whose first w output channels give width w."""

    def __init__(self, vocab_size: int, max_positions: int, type_vocab_size: int, width: int, eps: float, dropout: float,
                 pad_token_id: int, *, factorized: int | None = None, norm: str = "layernorm"):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, factorized or width, padding_idx=pad_token_id)
        if factorized:
            self.embedding_transformation = nn.Conv1d(factorized, width, 3, padding=1)
        self.position_embeddings = nn.Embedding(max_positions, width)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.norm = norm
        self.factorized = factorized
        self.dropout = dropout

    def sliced(self, width: int) -> Tensors:
        p = {
            "word_embeddings.weight": self.word_embeddings.weight[:, : self.factorized or width],
            "position_embeddings.weight": self.position_embeddings.weight[:, :width],
            "token_type_embeddings.weight": self.token_type_embeddings.weight[:, :width],
            "LayerNorm.weight": self.LayerNorm.weight[:width],
            "LayerNorm.bias": self.LayerNorm.bias[:width],
        }
        if self.factorized:
            p["embedding_transformation.weight"] = self.embedding_transformation.weight[:width]  # (w, e, 3)
            p["embedding_transformation.bias"] = self.embedding_transformation.bias[:width]
        return p

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, width: int,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        p = self.sliced(width)
        return embed(
            input_ids, token_type_ids,
            p["word_embeddings.weight"], p["position_embeddings.weight"], p["token_type_embeddings.weight"],
            p["LayerNorm.weight"], p["LayerNorm.bias"],
            eps=self.LayerNorm.eps, dropout=self.dropout, training=self.training,
            lift_w=p.get("embedding_transformation.weight"), lift_b=p.get("embedding_transformation.bias"),
            keep=keep, norm=self.norm,
        )


class ElasticAttention(nn.Module):
    """The ``mha`` op of a slot; at width w it uses the first w / head_size heads (importance-ordered)."""

    def __init__(self, width: int, head_size: int, eps: float, attention_dropout: float, hidden_dropout: float):
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.head_size = head_size
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout

    def sliced(self, width: int, heads: int = 0) -> Tensors:
        """The weights of ``mha`` at ``width`` (width / head_size heads), or of ``mha{heads}``: the first ``heads``
        heads, which reach the full ``width`` through the first heads x head_size columns of the output dense."""
        inner = heads * self.head_size if heads else width
        p = {}
        for name, layer in (("self.query", self.query), ("self.key", self.key), ("self.value", self.value)):
            p[f"{name}.weight"] = prefix(layer.weight, inner, width)
            p[f"{name}.bias"] = prefix(layer.bias, inner)
        p["output.dense.weight"] = prefix(self.dense.weight, width, inner)
        p["output.dense.bias"] = prefix(self.dense.bias, width)
        p["output.LayerNorm.weight"] = prefix(self.LayerNorm.weight, width)
        p["output.LayerNorm.bias"] = prefix(self.LayerNorm.bias, width)
        return p

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor, keep: torch.Tensor, heads: int = 0) -> torch.Tensor:
        p = self.sliced(x.shape[-1], heads)
        branch = attention(
            x, additive_mask,
            p["self.query.weight"], p["self.query.bias"], p["self.key.weight"], p["self.key.bias"],
            p["self.value.weight"], p["self.value.bias"], p["output.dense.weight"], p["output.dense.bias"],
            head_size=self.head_size, dropout=self.attention_dropout, training=self.training,
        )
        return residual_norm(x, branch, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"],
                             eps=self.LayerNorm.eps, dropout=self.hidden_dropout, training=self.training)


class ElasticFeedForward(nn.Module):
    """The ``ffn`` op of a slot; at width w it uses the first ffn_ratio * w inner units (importance-ordered), a
    pruned ``ffn{I}`` the first I."""

    def __init__(self, width: int, ffn_ratio: int, act, eps: float, hidden_dropout: float):
        super().__init__()
        self.intermediate = nn.Linear(width, ffn_ratio * width)
        self.output = nn.Linear(ffn_ratio * width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.ffn_ratio = ffn_ratio
        self.act = act
        self.hidden_dropout = hidden_dropout

    def sliced(self, width: int, inner: int = 0) -> Tensors:
        inner = inner or self.ffn_ratio * width
        return {
            "intermediate.dense.weight": prefix(self.intermediate.weight, inner, width),
            "intermediate.dense.bias": prefix(self.intermediate.bias, inner),
            "output.dense.weight": prefix(self.output.weight, width, inner),
            "output.dense.bias": prefix(self.output.bias, width),
            "output.LayerNorm.weight": prefix(self.LayerNorm.weight, width),
            "output.LayerNorm.bias": prefix(self.LayerNorm.bias, width),
        }

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor, keep: torch.Tensor, inner: int = 0) -> torch.Tensor:
        p = self.sliced(x.shape[-1], inner)
        branch = feed_forward(x, p["intermediate.dense.weight"], p["intermediate.dense.bias"],
                              p["output.dense.weight"], p["output.dense.bias"], act=self.act)
        return residual_norm(x, branch, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"],
                             eps=self.LayerNorm.eps, dropout=self.hidden_dropout, training=self.training)


class ElasticSepConv(nn.Module):
    """The ``sepconv{3,5,7}`` ops of a slot, sharing one kernel-7 depthwise filter: kernel k uses its centre k taps
    (once-for-all's elastic kernel); the pointwise layer and LayerNorm are shared too."""

    def __init__(self, width: int, act, eps: float, hidden_dropout: float):
        super().__init__()
        self.depthwise_weight = nn.Parameter(torch.empty(width, 1, MAX_KERNEL))  # (w, 1, k_max)
        self.depthwise_bias = nn.Parameter(torch.zeros(width))
        self.pointwise = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.act = act
        self.hidden_dropout = hidden_dropout

    def sliced(self, width: int, kernel_size: int) -> Tensors:
        start = (MAX_KERNEL - kernel_size) // 2
        return {
            "depthwise.weight": self.depthwise_weight[:width, :, start : start + kernel_size],
            "depthwise.bias": prefix(self.depthwise_bias, width),
            "pointwise.weight": prefix(self.pointwise.weight, width, width),
            "pointwise.bias": prefix(self.pointwise.bias, width),
            "LayerNorm.weight": prefix(self.LayerNorm.weight, width),
            "LayerNorm.bias": prefix(self.LayerNorm.bias, width),
        }

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor, keep: torch.Tensor, kernel_size: int) -> torch.Tensor:
        p = self.sliced(x.shape[-1], kernel_size)
        branch = sepconv(x, keep, p["depthwise.weight"], p["depthwise.bias"], p["pointwise.weight"],
                         p["pointwise.bias"], act=self.act)
        return residual_norm(x, branch, p["LayerNorm.weight"], p["LayerNorm.bias"],
                             eps=self.LayerNorm.eps, dropout=self.hidden_dropout, training=self.training)


class ElasticBottleneck(nn.Module):
    """The ``bottleneck{B}x{N}`` ops of a slot (MobileBERT layers), sharing one layer of the widest inter width,
    the widest intra width and the most FFNs: ``bottleneck{B}x{N}`` at width w uses the first w inter channels,
    the first B intra channels (whole heads of ``head_size``) and the first N FFNs."""

    def __init__(self, width: int, intra: int, num_ffn: int, *, ffn_ratio: int, head_size: int, norm: str, act: str,
                 eps: float, attention_dropout: float, hidden_dropout: float):
        super().__init__()
        config = NasBertConfig(blocks=[{"width": width, "ops": [f"bottleneck{intra}x{num_ffn}"]}], ffn_ratio=ffn_ratio,
                               bottleneck_head_size=head_size, bottleneck_norm=norm, bottleneck_act=act,
                               layer_norm_eps=eps, attention_probs_dropout_prob=attention_dropout,
                               hidden_dropout_prob=hidden_dropout)
        self.layer = NasBertBottleneck(config, width, intra, num_ffn)  # the widest version: its parameters
        self.ffn_ratio = ffn_ratio

    def sliced(self, width: int, intra: int, num_ffn: int) -> Tensors:
        inner = self.ffn_ratio * intra
        # (out, in) of every parameter at this size, keyed by the parameter's role in the layer
        sizes = {"bottleneck.input": (intra, width), "bottleneck.attention": (intra, width),
                 "attention.self.query": (intra, intra), "attention.self.key": (intra, intra),
                 "attention.self.value": (intra, width), "attention.output": (intra, intra), "output": (width, intra)}
        for i in range(num_ffn):
            sizes[f"ffn.{i}.intermediate"] = (inner, intra)
            sizes[f"ffn.{i}.output"] = (intra, inner)
        p = {}
        for name, param in self.layer.named_parameters():
            owner = name.rsplit(".", 1)[0].removesuffix(".dense").removesuffix(".norm")  # a norm has its dense's out
            if owner not in sizes:
                continue  # an FFN beyond num_ffn
            out_features, in_features = sizes[owner]
            p[name] = prefix(param, out_features, in_features)
        return p

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor, keep: torch.Tensor, intra: int,
                num_ffn: int) -> torch.Tensor:
        return self.layer.compute(x, additive_mask, self.sliced(x.shape[-1], intra, num_ffn), num_ffn)


class Slot(nn.Module):
    """One position of the chain: the widest version of every op it may hold."""

    def __init__(self, width: int, *, head_size: int, ffn_ratio: int, act, eps: float, attention_dropout: float,
                 hidden_dropout: float, bottleneck: dict | None = None):
        super().__init__()
        self.mha = ElasticAttention(width, head_size, eps, attention_dropout, hidden_dropout)
        self.ffn = ElasticFeedForward(width, ffn_ratio, act, eps, hidden_dropout)
        self.sepconv = ElasticSepConv(width, act, eps, hidden_dropout)
        if bottleneck is not None:  # only in spaces with bottleneck ops
            self.bottleneck = ElasticBottleneck(width, ffn_ratio=ffn_ratio, eps=eps, attention_dropout=attention_dropout,
                                                hidden_dropout=hidden_dropout, **bottleneck)

    def sliced(self, op: str, width: int) -> Tensors:
        spec = op_spec(op)
        if spec.kind == "sepconv":
            return self.sepconv.sliced(width, spec.kernel)
        if spec.kind == "bottleneck":
            return self.bottleneck.sliced(width, spec.intra, spec.num_ffn)
        if spec.kind == "ffn":
            return self.ffn.sliced(width, spec.inner)
        if spec.kind == "mha":
            return self.mha.sliced(width, spec.heads)
        return getattr(self, spec.kind).sliced(width)

    def attention_probs(self, x: torch.Tensor, op: str, additive_mask: torch.Tensor) -> torch.Tensor | None:
        """The attention distributions (B, heads, T, T) that ``op`` computes on ``x``; None for ops without
        attention. (Recomputed from the same sliced weights; progressive transfer matches them to the teacher's.)"""
        width, spec = x.shape[-1], op_spec(op)
        kind = spec.kind
        if kind == "mha":
            p, head_size = self.mha.sliced(width, spec.heads), self.mha.head_size
            q = F.linear(x, p["self.query.weight"], p["self.query.bias"])
            k = F.linear(x, p["self.key.weight"], p["self.key.bias"])
        elif kind == "bottleneck":
            layer = self.bottleneck.layer
            p, head_size = self.sliced(op, width), layer.head_size
            shared = F.linear(x, p["bottleneck.attention.dense.weight"], p["bottleneck.attention.dense.bias"])
            shared = normalize(shared, p["bottleneck.attention.norm.weight"], p["bottleneck.attention.norm.bias"],
                               kind=layer.norm, eps=layer.eps)
            q = F.linear(shared, p["attention.self.query.weight"], p["attention.self.query.bias"])
            k = F.linear(shared, p["attention.self.key.weight"], p["attention.self.key.bias"])
        else:
            return None
        return attention_probs(q, k, additive_mask, head_size=head_size)  # (B, h, T, T)

    def forward(self, x: torch.Tensor, op: str, additive_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        spec = op_spec(op)
        if spec.kind == "identity":
            return x
        if spec.kind == "sepconv":
            return self.sepconv(x, additive_mask, keep, spec.kernel)
        if spec.kind == "bottleneck":
            return self.bottleneck(x, additive_mask, keep, spec.intra, spec.num_ffn)
        if spec.kind == "ffn":
            return self.ffn(x, additive_mask, keep, spec.inner)
        if spec.kind == "mha":
            return self.mha(x, additive_mask, keep, spec.heads)
        return getattr(self, spec.kind)(x, additive_mask, keep)


class ElasticLinear(nn.Linear):
    """A linear adapter whose input and/or output can be cut to a prefix."""

    def sliced(self, out_features: int | None = None, in_features: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return prefix(self.weight, out_features, in_features), prefix(self.bias, out_features)

    def forward(self, x: torch.Tensor, out_features: int | None = None, in_features: int | None = None) -> torch.Tensor:
        weight, bias = self.sliced(out_features, in_features)
        return nn.functional.linear(x, weight, bias)
