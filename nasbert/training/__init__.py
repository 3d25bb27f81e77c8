"""Block-wise distillation of the supernet with progressive shrinking (NAS-BERT section 3.2)."""

from .blockwise import BlockBatch, BlockLearner, block_batches, block_loss, score_paths
from .config import RayConfig, ShrinkConfig, TrainConfig
from .shrinking import BlockCandidates, shrink_round
from .trainer import BlockwiseTrainer

__all__ = ["BlockBatch", "BlockCandidates", "BlockLearner", "BlockwiseTrainer", "RayConfig", "ShrinkConfig", "TrainConfig",
           "block_batches", "block_loss", "score_paths", "shrink_round"]
