"""Block-wise distillation of the supernet with progressive shrinking (NAS-BERT section 3.2), and whole-model
distillation of a chosen sub-network (`distill.py`)."""

from .blockwise import BlockBatch, BlockLearner, block_batches, block_loss, score_paths
from .config import DistillConfig, RayConfig, ShrinkConfig, TrainConfig
from .distill import DistillResult, distill_arch
from .shrinking import BlockCandidates, shrink_round
from .trainer import BlockwiseTrainer

__all__ = ["BlockBatch", "BlockCandidates", "BlockLearner", "BlockwiseTrainer", "DistillConfig", "DistillResult", "RayConfig",
           "ShrinkConfig", "TrainConfig", "block_batches", "block_loss", "distill_arch", "score_paths", "shrink_round"]
