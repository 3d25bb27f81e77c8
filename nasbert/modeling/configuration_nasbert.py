"""Configuration of an extracted nasbert model.

This file is copied into every exported model directory and must import nothing from nasbert.
"""

from __future__ import annotations

from transformers import PretrainedConfig

LAYER_OPS = ("mha", "ffn", "sepconv3", "sepconv5", "sepconv7")


class NasBertConfig(PretrainedConfig):
    r"""Configuration of a :class:`NasBertModel`: a BERT whose layers are chosen per position.

    Args:
        blocks: one ``{"width": int, "ops": [op, ...]}`` per block; ops are ``mha``, ``ffn``, ``sepconv3``,
            ``sepconv5``, ``sepconv7`` or ``identity`` (skipped).
        hidden_size: width of the model's output (the teacher's width; the last block is projected to it).
        head_size: width of one attention head; an ``mha`` layer of width ``w`` has ``w / head_size`` heads.
        ffn_ratio: an ``ffn`` layer of width ``w`` has ``ffn_ratio * w`` inner units.
        classifier_pooling: what the sequence classifier's pooler reads: ``"cls"`` (the first token, as BERT) or
            ``"mean"`` (the mean over real tokens; suits models whose last layers are local convolutions).
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
        **kwargs,
    ):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.blocks = [{"width": int(b["width"]), "ops": list(b["ops"])} for b in (blocks or [])]
        for i, block in enumerate(self.blocks):
            for op in block["ops"]:
                if op != "identity" and op not in LAYER_OPS:
                    raise ValueError(f"blocks[{i}]: unknown op {op!r}; known: {', '.join(LAYER_OPS)}, identity")
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

    @property
    def embedding_size(self) -> int:
        """Width of the embeddings: the first block's width."""
        return self.blocks[0]["width"] if self.blocks else self.hidden_size

    @property
    def num_hidden_layers(self) -> int:
        """Non-identity layers in the whole model."""
        return sum(op != "identity" for b in self.blocks for op in b["ops"])
