"""The weight-sharing supernet, initialised from the teacher.

Layout (teacher width ``H``, N blocks of ``k`` slots)::

    input_ids -> embeddings[:, :w0] -> block 0 (slots 0..k-1 at width w0) -> out_adapter 0 (w0 -> H)
              -> in_adapter 1 (H -> w1) -> block 1 -> out_adapter 1 -> ... -> out_adapter N-1 (-> H)

Block-wise training runs one block alone: block n > 0 reads the teacher's hidden state at the end of block
n-1 through its input adapter, and block 0 reads the token ids through the (elastic) embeddings. Every block's
output is mapped to the teacher's width by its output adapter, where it is compared with the teacher.

The hidden channels are importance-ordered (``importance.py``): channel ``i`` of the supernet is channel
``perm[i]`` of the teacher. Input adapters start as that permutation and output adapters as its inverse, so
``supernet(ids, arch=space.teacher_arch())`` is the teacher itself, and a narrower block starts from the
teacher's most important channels.

>>> from nasbert import SearchSpace, SuperNet
>>> space = SearchSpace.load("minilm_l6")
>>> supernet = SuperNet.from_teacher(space)  # built-in MiniLM-L6-H384  # doctest: +SKIP
>>> hidden = supernet(input_ids, arch=space.sample(rng))  # (B, T, 384)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.activations import ACT2FN

from ..io import atomic_dir
from ..modeling import NasBertConfig, NasBertModel
from ..modeling.modeling_nasbert import additive_attention_mask
from ..modeling.configuration_nasbert import bottleneck_shape
from ..space import Arch, BlockArch, SearchSpace
from ..teacher import TeacherError, load_teacher
from .importance import reorder_bert, reorder_units, split_bert_state
from .ops import ElasticEmbeddings, ElasticLinear, Slot

__all__ = ["SuperNet"]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "supernet.safetensors"
CONFIG_NAME = "supernet.json"


class SuperNet(nn.Module):
    """Weight-sharing supernet over a :class:`SearchSpace`. Build it with :meth:`from_teacher`.

    Calling ``SuperNet(space)`` directly gives a randomly initialised supernet (the baseline that shows what
    teacher initialisation is worth); ``seed`` makes it reproducible.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        pad_token_id: int = 0,
        initializer_range: float = 0.02,
        seed: int = 0,
        teacher_source: str | None = None,
    ):
        super().__init__()
        self.space = space
        self.hparams: dict[str, Any] = dict(
            hidden_act=hidden_act, layer_norm_eps=layer_norm_eps, hidden_dropout_prob=hidden_dropout_prob,
            attention_probs_dropout_prob=attention_probs_dropout_prob, pad_token_id=pad_token_id,
            initializer_range=initializer_range,
        )
        #: where the teacher came from (a path or hub id), saved with the supernet
        self.teacher_source = teacher_source
        t, act = space.teacher, ACT2FN[hidden_act]
        H = t.hidden_size
        self.embeddings = ElasticEmbeddings(t.vocab_size, t.max_position_embeddings, t.type_vocab_size, H,
                                            layer_norm_eps, hidden_dropout_prob, pad_token_id,
                                            factorized=space.factorized_embedding_size, norm=space.embedding_norm)
        shapes = [bottleneck_shape(op) for op in space.ops if bottleneck_shape(op)]
        bottleneck = dict(intra=max(b for b, _ in shapes), num_ffn=max(n for _, n in shapes),
                          head_size=space.bottleneck_head_size, norm=space.bottleneck_norm,
                          act=space.bottleneck_act) if shapes else None
        self.slots = nn.ModuleList(
            Slot(H, head_size=space.head_size, ffn_ratio=space.ffn_ratio, act=act, eps=layer_norm_eps,
                 attention_dropout=attention_probs_dropout_prob, hidden_dropout=hidden_dropout_prob,
                 bottleneck=bottleneck)
            for _ in range(space.num_slots)
        )
        # in_adapters[n - 1] feeds block n (n >= 1); out_adapters[n] maps block n to the teacher's width.
        self.in_adapters = nn.ModuleList(ElasticLinear(H, H) for _ in range(space.num_blocks - 1))
        self.out_adapters = nn.ModuleList(ElasticLinear(H, H) for _ in range(space.num_blocks))
        self._reset_parameters(initializer_range, seed)

    # ---------------------------------------------------------------- initialisation

    @torch.no_grad()
    def _reset_parameters(self, std: float, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        for slot in self.slots:
            conv = slot.sepconv
            conv.depthwise_weight.copy_(torch.randn(conv.depthwise_weight.shape, generator=generator) * std)
            conv.depthwise_bias.zero_()
        lift = getattr(self.embeddings, "embedding_transformation", None)
        if lift is not None:
            lift.weight.copy_(torch.randn(lift.weight.shape, generator=generator) * std)
            lift.bias.zero_()
        self._set_adapters(torch.arange(self.space.teacher.hidden_size))

    @torch.no_grad()
    @torch.no_grad()
    def reset_adapters(self) -> None:
        """Make every adapter the identity (the teacher's channel order), so that a full-width path extracts without
        them (``extract(..., drop_identity_adapters=True)``)."""
        self._set_adapters(torch.arange(self.space.teacher.hidden_size))

    def _set_adapters(self, perm: torch.Tensor) -> None:
        """Input adapters select the reordered channels (P), output adapters put them back (P^T)."""
        H = len(perm)
        P = torch.zeros(H, H)
        P[torch.arange(H), perm] = 1.0  # (x_reordered = P @ x_teacher)
        for adapter in self.in_adapters:
            adapter.weight.copy_(P)
            adapter.bias.zero_()
        for adapter in self.out_adapters:
            adapter.weight.copy_(P.T)
            adapter.bias.zero_()

    @classmethod
    def from_teacher(cls, space: SearchSpace, teacher: str | os.PathLike | nn.Module | None = None, *,
                     init: str = "teacher", seed: int = 0, reorder: bool | str = True) -> SuperNet:
        """A supernet whose MHA and FFN ops start from the teacher's own sub-layers, units ordered by importance.

        ``teacher``: a local HF BERT directory, a hub id, a loaded ``BertModel``, or None for the space's default
        teacher (``teacher.name`` in its YAML; null means the built-in MiniLM-L6-H384). Slot ``s`` takes its mha
        op from teacher layer ``s // 2``'s attention and its ffn op from the same layer's FFN; sepconv ops and
        nothing else start random. ``init="random"`` keeps the teacher's hyper-parameters (activation, norms,
        dropout) but none of its weights: the baseline that shows what teacher initialisation is worth.
        ``reorder=False`` keeps the teacher's own unit order, so the adapters start as identities and a
        full-width path extracts to the teacher's layers with no adapter at all (the layer-dropped baselines of
        :mod:`nasbert.quality.baselines`); narrower slices then keep arbitrary units, so search with the default.
        ``reorder="units"`` orders each layer's heads and FFN neurons but keeps the hidden channels: full-width
        paths are still the teacher's layers with no adapter, and a pruned ``ffn{I}`` keeps the I most important
        neurons (the teacher cuts of :mod:`nasbert.export.cuts`).
        """
        if init not in ("teacher", "random"):
            raise ValueError(f"init must be 'teacher' or 'random', got {init!r}")
        if reorder not in (True, False, "units"):
            raise ValueError(f"reorder must be True, False or 'units', got {reorder!r}")
        if isinstance(teacher, nn.Module):
            bert, source = teacher, getattr(teacher.config, "_name_or_path", "") or "<in-memory BertModel>"
        else:
            bert, _, source = load_teacher(teacher if teacher is not None else space.teacher.name)
        config = bert.config
        _check_teacher_matches(space, config, source)
        supernet = cls(
            space,
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            hidden_dropout_prob=config.hidden_dropout_prob,
            attention_probs_dropout_prob=config.attention_probs_dropout_prob,
            pad_token_id=config.pad_token_id if config.pad_token_id is not None else 0,
            initializer_range=config.initializer_range,
            seed=seed,
            teacher_source=source,
        )
        if init == "random":
            return supernet
        state = {k: v.detach().float().cpu() for k, v in bert.state_dict().items()}
        embeddings, layers = split_bert_state(state, config.num_hidden_layers)
        perm = torch.arange(config.hidden_size)
        if reorder == "units":
            layers = reorder_units(layers, space.head_size)
        elif reorder:
            embeddings, layers, perm = reorder_bert(embeddings, layers, space.head_size)
        supernet._load_teacher(embeddings, layers, perm)
        return supernet

    @torch.no_grad()
    def _load_teacher(self, embeddings: dict, layers: list[dict], perm: torch.Tensor) -> None:
        e = self.embeddings
        for name in ("position_embeddings", "token_type_embeddings"):
            getattr(e, name).weight.copy_(embeddings[f"{name}.weight"])
        if e.factorized:
            e.word_embeddings.weight.copy_(_factorize(embeddings["word_embeddings.weight"], e))
        else:
            e.word_embeddings.weight.copy_(embeddings["word_embeddings.weight"])
        e.LayerNorm.weight.copy_(embeddings["LayerNorm.weight"])
        e.LayerNorm.bias.copy_(embeddings["LayerNorm.bias"])
        for s, slot in enumerate(self.slots):
            layer = layers[s // 2]
            mha, ffn = slot.mha, slot.ffn
            for target, key in ((mha.query, "attention.self.query"), (mha.key, "attention.self.key"),
                                (mha.value, "attention.self.value"), (mha.dense, "attention.output.dense"),
                                (mha.LayerNorm, "attention.output.LayerNorm"),
                                (ffn.intermediate, "intermediate.dense"), (ffn.output, "output.dense"),
                                (ffn.LayerNorm, "output.LayerNorm")):
                target.weight.copy_(layer[f"{key}.weight"])
                target.bias.copy_(layer[f"{key}.bias"])
        self._set_adapters(perm)

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        arch: Arch,
        output_block_states: bool = False,
        attention_probs: list | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the sub-network ``arch``; returns the final hidden states at the teacher's width (B, T, H).

        With ``output_block_states`` also returns every block's output mapped to the teacher's width (the
        same points the teacher's ``hidden_states[space.teacher_boundaries]`` are taken at). A list passed as
        ``attention_probs`` receives ``(slot, probs (B, heads, T, T))`` for every op with attention.
        """
        self.space.validate(arch, allow_teacher=True)
        attention_mask, token_type_ids = _default_inputs(input_ids.shape, input_ids.device, attention_mask,
                                                         token_type_ids)
        additive = additive_attention_mask(attention_mask, self.embeddings.word_embeddings.weight.dtype)
        h = self.embeddings(input_ids, token_type_ids, arch.blocks[0].width, attention_mask)  # (B, T, w0)
        block_states = []
        for n, block in enumerate(arch.blocks):
            if n > 0:
                h = self.in_adapters[n - 1](block_states[-1], out_features=block.width)  # (B, T, H) -> (B, T, wn)
            h = self._run_layers(n, block, h, additive, attention_mask, attention_probs)
            block_states.append(self.out_adapters[n](h, in_features=block.width))  # (B, T, H)
        return (block_states[-1], block_states) if output_block_states else block_states[-1]

    def forward_block(
        self,
        block: int,
        inputs: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        path: BlockArch,
        attention_probs: list | None = None,
    ) -> torch.Tensor:
        """Run block ``block`` alone under ``path`` and return its output at the teacher's width (B, T, H).

        ``inputs`` are the token ids (B, T) for block 0 and the teacher's hidden states at the end of block
        ``block - 1`` (B, T, H) for the others.
        """
        self.space.validate(_single_block_probe(self.space, block, path), allow_teacher=True)
        attention_mask, token_type_ids = _default_inputs(inputs.shape[:2], inputs.device, attention_mask, token_type_ids)
        additive = additive_attention_mask(attention_mask, self.embeddings.word_embeddings.weight.dtype)
        if block == 0:
            h = self.embeddings(inputs, token_type_ids, path.width, attention_mask)
        else:
            h = self.in_adapters[block - 1](inputs, out_features=path.width)
        h = self._run_layers(block, path, h, additive, attention_mask, attention_probs)
        return self.out_adapters[block](h, in_features=path.width)

    def _run_layers(self, n: int, path: BlockArch, h: torch.Tensor, additive: torch.Tensor,
                    keep: torch.Tensor, attention_probs: list | None = None) -> torch.Tensor:
        for slot, op in zip(self.space.block_slots(n), path.ops):
            if attention_probs is not None and op != "identity":
                probs = self.slots[slot].attention_probs(h, op, additive)
                if probs is not None:
                    attention_probs.append((slot, probs))
            h = self.slots[slot](h, op, additive, keep)  # (B, T, w)
        return h

    def block_parameters(self, block: int) -> list[tuple[str, nn.Parameter]]:
        """The parameters block ``block`` trains: each parameter belongs to exactly one block (block 0 owns the
        embeddings; block n owns its input adapter, its slots and its output adapter), so blocks can be
        trained by separate optimisers, or in separate processes, without ever writing the same weight."""
        self.space._check_block_index(block)
        prefixes = [f"slots.{s}." for s in self.space.block_slots(block)] + [f"out_adapters.{block}."]
        prefixes.append("embeddings." if block == 0 else f"in_adapters.{block - 1}.")
        return [(name, p) for name, p in self.named_parameters() if name.startswith(tuple(prefixes))]

    # ---------------------------------------------------------------- extraction

    def extract_config(self, arch: Arch) -> NasBertConfig:
        t = self.space.teacher
        return NasBertConfig(
            blocks=[{"width": b.width, "ops": list(b.ops)} for b in arch.blocks],
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            head_size=self.space.head_size,
            ffn_ratio=self.space.ffn_ratio,
            max_position_embeddings=t.max_position_embeddings,
            type_vocab_size=t.type_vocab_size,
            **self.space.mobile_options(),
            **self.hparams,
        )

    @torch.no_grad()
    def extract(self, arch: Arch, *, drop_identity_adapters: bool = False) -> NasBertModel:
        """A standalone :class:`NasBertModel` computing what ``self(…, arch=arch)`` computes (eval mode).

        Adapters at each block boundary (out_adapter n, then in_adapter n+1) are folded into one linear layer.
        With ``drop_identity_adapters``, a model whose folded adapters and output adapter are all exactly the
        identity (every block at the teacher's width, adapters untrained, no reordering: ``reorder=False``) is
        built without them (``config.adapters = False``), so it costs what a plain BERT with those layers costs.
        """
        self.space.validate(arch, allow_teacher=True)
        config = self.extract_config(arch)
        config.adapters = False if drop_identity_adapters and self._identity_adapters(arch) else arch.adapters
        model = NasBertModel(config)
        model.embeddings.load_state_dict(self.embeddings.sliced(arch.blocks[0].width))
        layers = iter(model.encoder.layer)
        for n, block in enumerate(arch.blocks):
            for slot, op in zip(self.space.block_slots(n), block.layers):
                next(layers).load_state_dict(self.slots[slot].sliced(op, block.width))
        if config.adapters is False:
            return model.eval()
        # The supernet's map at each boundary (out_adapter n, then in_adapter n + 1) and its output adapter, in
        # float64; the model keeps one linear layer per run of maps that ends at a block with layers or the output.
        maps = []
        for n in range(len(arch.blocks) - 1):
            out_w, out_b = self.out_adapters[n].sliced(in_features=arch.blocks[n].width)  # (H, w_n), (H,)
            in_w, in_b = self.in_adapters[n].sliced(out_features=arch.blocks[n + 1].width)  # (w_n+1, H), (w_n+1,)
            maps.append((in_w.double() @ out_w.double(), in_w.double() @ out_b.double() + in_b.double()))
        weight, bias = self.out_adapters[-1].sliced(in_features=arch.widths[-1])
        maps.append((weight.double(), bias.double()))
        modules = [*model.encoder.adapters, model.encoder.output_adapter]
        pending = None
        for (weight, bias), module in zip(maps, modules):
            if pending is not None:  # the maps folded into this one, since the last layer
                weight, bias = weight @ pending[0], weight @ pending[1] + bias
            if isinstance(module, nn.Identity):
                pending = (weight, bias)
                continue
            module.weight.copy_(weight.float())
            module.bias.copy_(bias.float())
            pending = None
        return model.eval()

    @torch.no_grad()
    def _identity_adapters(self, arch: Arch) -> bool:
        """Whether every adapter ``arch`` passes through is exactly the identity (so it can be left out)."""
        H = self.space.teacher.hidden_size
        if any(w != H for w in arch.widths):
            return False
        eye = torch.eye(H)
        used = [*self.in_adapters[: len(arch.blocks) - 1], *self.out_adapters[: len(arch.blocks)]]
        return all(torch.equal(a.weight[:H, :H], eye) and not a.bias[:H].any() for a in used)

    # ---------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | os.PathLike, *, tokenizer=None) -> Path:
        """Write ``supernet.safetensors`` and ``supernet.json`` (+ the tokenizer) atomically to ``directory``."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
            meta = {"space": self.space.to_dict(), "hparams": self.hparams, "teacher": self.teacher_source}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> SuperNet:
        """Load a saved supernet, in eval mode (as Hugging Face models load); call ``.train()`` to train it."""
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"{directory} is not a saved supernet (expected {CONFIG_NAME} and {WEIGHTS_NAME}); "
                "create one with SuperNet.save_pretrained() or `nasbert run`"
            )
        meta = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
        space = SearchSpace.from_dict(meta["space"], source=str(directory / CONFIG_NAME))
        supernet = cls(space, **meta["hparams"], teacher_source=meta.get("teacher"))
        supernet.load_state_dict(load_file(directory / WEIGHTS_NAME))
        return supernet.eval()


@torch.no_grad()
def _factorize(word: torch.Tensor, embeddings) -> torch.Tensor:
    """The teacher's (V, H) word table as an e-wide table and a lift: the table is ``word @ U`` and the lift's
    centre tap ``U^T``, U the top-e principal directions (H, e), so the lifted table is the best rank-e
    approximation of the teacher's and narrower widths start from its leading channels."""
    e = embeddings.factorized
    gram = word.double().T @ word.double()  # (H, H)
    _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues
    U = vectors[:, -e:].flip(-1)  # (H, e), leading direction first
    lift = embeddings.embedding_transformation
    lift.weight.zero_()
    lift.weight[:, :, 1].copy_(U.float())
    lift.bias.zero_()
    return (word.double() @ U).float()  # (V, e)


def _default_inputs(shape, device, attention_mask, token_type_ids):
    """All-ones attention mask and all-zero token types for a (B, T) batch where none are given."""
    if attention_mask is None:
        attention_mask = torch.ones(shape, dtype=torch.long, device=device)
    if token_type_ids is None:
        token_type_ids = torch.zeros(shape, dtype=torch.long, device=device)
    return attention_mask, token_type_ids


def _single_block_probe(space: SearchSpace, block: int, path: BlockArch) -> Arch:
    """An arch that is ``path`` at ``block`` and a valid filler elsewhere, to validate one block's path."""
    space._check_block_index(block)
    filler = space.teacher_arch().blocks[0]
    return Arch(tuple(path if n == block else filler for n in range(space.num_blocks)))


def _check_teacher_matches(space: SearchSpace, config, source: str) -> None:
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                "max_position_embeddings", "type_vocab_size"):
        expected, actual = getattr(space.teacher, key), getattr(config, key)
        if expected != actual:
            raise TeacherError(
                f"teacher {source!r} has {key} = {actual}, but search space {space.name!r} was written for "
                f"teacher.{key} = {expected}: use a space for this teacher (e.g. copy search_spaces/"
                f"{space.name}.yaml and set teacher.{key}: {actual}) or the teacher the space names"
            )
