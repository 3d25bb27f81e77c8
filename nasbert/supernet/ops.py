"""Elastic ops: each holds the weights of its widest version and hands out prefix slices.

Every op has one ``sliced(...)`` method that returns its weights at a given width, keyed by the parameter
names of the matching layer of the extracted model (``nasbert.modeling``). ``forward`` runs the shared kernel
on that slice and extraction copies that slice, so the two cannot drift apart.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling.modeling_nasbert import attention, embed, feed_forward, residual_norm, sepconv
from ..space import MAX_KERNEL, SEPCONV_KERNELS

Tensors = dict[str, torch.Tensor]


def prefix(weight: torch.Tensor, out_features: int | None = None, in_features: int | None = None) -> torch.Tensor:
    """The one slicing helper: the first ``out_features`` rows and ``in_features`` columns (None = all)."""
    if weight.dim() == 1:
        return weight[:out_features]
    return weight[:out_features, :in_features]


class ElasticEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, max_positions: int, type_vocab_size: int, width: int, eps: float, dropout: float,
                 pad_token_id: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_positions, width)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = dropout

    def sliced(self, width: int) -> Tensors:
        return {
            "word_embeddings.weight": self.word_embeddings.weight[:, :width],
            "position_embeddings.weight": self.position_embeddings.weight[:, :width],
            "token_type_embeddings.weight": self.token_type_embeddings.weight[:, :width],
            "LayerNorm.weight": self.LayerNorm.weight[:width],
            "LayerNorm.bias": self.LayerNorm.bias[:width],
        }

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, width: int) -> torch.Tensor:
        p = self.sliced(width)
        return embed(
            input_ids, token_type_ids,
            p["word_embeddings.weight"], p["position_embeddings.weight"], p["token_type_embeddings.weight"],
            p["LayerNorm.weight"], p["LayerNorm.bias"],
            eps=self.LayerNorm.eps, dropout=self.dropout, training=self.training,
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

    def sliced(self, width: int) -> Tensors:
        p = {}
        for name, layer in (("self.query", self.query), ("self.key", self.key), ("self.value", self.value),
                            ("output.dense", self.dense)):
            p[f"{name}.weight"] = prefix(layer.weight, width, width)
            p[f"{name}.bias"] = prefix(layer.bias, width)
        p["output.LayerNorm.weight"] = prefix(self.LayerNorm.weight, width)
        p["output.LayerNorm.bias"] = prefix(self.LayerNorm.bias, width)
        return p

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        p = self.sliced(x.shape[-1])
        branch = attention(
            x, additive_mask,
            p["self.query.weight"], p["self.query.bias"], p["self.key.weight"], p["self.key.bias"],
            p["self.value.weight"], p["self.value.bias"], p["output.dense.weight"], p["output.dense.bias"],
            head_size=self.head_size, dropout=self.attention_dropout, training=self.training,
        )
        return residual_norm(x, branch, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"],
                             eps=self.LayerNorm.eps, dropout=self.hidden_dropout, training=self.training)


class ElasticFeedForward(nn.Module):
    """The ``ffn`` op of a slot; at width w it uses the first ffn_ratio * w inner units (importance-ordered)."""

    def __init__(self, width: int, ffn_ratio: int, act, eps: float, hidden_dropout: float):
        super().__init__()
        self.intermediate = nn.Linear(width, ffn_ratio * width)
        self.output = nn.Linear(ffn_ratio * width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.ffn_ratio = ffn_ratio
        self.act = act
        self.hidden_dropout = hidden_dropout

    def sliced(self, width: int) -> Tensors:
        inner = self.ffn_ratio * width
        return {
            "intermediate.dense.weight": prefix(self.intermediate.weight, inner, width),
            "intermediate.dense.bias": prefix(self.intermediate.bias, inner),
            "output.dense.weight": prefix(self.output.weight, width, inner),
            "output.dense.bias": prefix(self.output.bias, width),
            "output.LayerNorm.weight": prefix(self.LayerNorm.weight, width),
            "output.LayerNorm.bias": prefix(self.LayerNorm.bias, width),
        }

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        p = self.sliced(x.shape[-1])
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


class Slot(nn.Module):
    """One position of the chain: the widest version of every op it may hold."""

    def __init__(self, width: int, *, head_size: int, ffn_ratio: int, act, eps: float, attention_dropout: float,
                 hidden_dropout: float):
        super().__init__()
        self.mha = ElasticAttention(width, head_size, eps, attention_dropout, hidden_dropout)
        self.ffn = ElasticFeedForward(width, ffn_ratio, act, eps, hidden_dropout)
        self.sepconv = ElasticSepConv(width, act, eps, hidden_dropout)

    def sliced(self, op: str, width: int) -> Tensors:
        if op in SEPCONV_KERNELS:
            return self.sepconv.sliced(width, SEPCONV_KERNELS[op])
        return getattr(self, op).sliced(width)

    def forward(self, x: torch.Tensor, op: str, additive_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if op == "identity":
            return x
        if op in SEPCONV_KERNELS:
            return self.sepconv(x, additive_mask, keep, SEPCONV_KERNELS[op])
        return getattr(self, op)(x, additive_mask, keep)


class ElasticLinear(nn.Linear):
    """A linear adapter whose input and/or output can be cut to a prefix."""

    def sliced(self, out_features: int | None = None, in_features: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return prefix(self.weight, out_features, in_features), prefix(self.bias, out_features)

    def forward(self, x: torch.Tensor, out_features: int | None = None, in_features: int | None = None) -> torch.Tensor:
        weight, bias = self.sliced(out_features, in_features)
        return nn.functional.linear(x, weight, bias)
