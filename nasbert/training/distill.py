"""Whole-model distillation of one chosen sub-network (NAS-BERT's pre-training KD of the searched models).

Block-wise training feeds every student block the *teacher's* state at the previous boundary. Once the search
has fixed an architecture, the blocks are chained instead: block n reads the student's own block n-1 output, and
the whole model is trained end to end with the same targets (MSE to the teacher's hidden states at
``space.teacher_boundaries``, averaged over the blocks), so that every block learns to work on what the student's
earlier blocks actually produce.

The supernet passed in is never modified: a copy is trained under the fixed architecture, and the result is the
copy's extracted model.

>>> result = distill_arch(supernet, arch, teacher, corpus, tokenizer,
...                       config=DistillConfig(steps=500))  # doctest: +SKIP
>>> result.valid_loss_after < result.valid_loss_before  # doctest: +SKIP
True
>>> result.model.save_pretrained("models/small")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..config import ConfigError
from ..data import BatchIterator, TokenizedCorpus, mask_tokens
from ..io import fault_point
from ..modeling import NasBertModel
from ..space import Arch
from ..supernet import SuperNet
from ..utils import to_device, torch_threads
from .blockwise import block_batches, make_optimizer, masked_mse
from .config import DistillConfig, TrainConfig
from .evaluation import validation_batches, whole_model_loss

__all__ = ["DistillConfig", "DistillResult", "distill_arch", "distill_in_place", "distill_loss"]

logger = logging.getLogger(__name__)


@dataclass
class DistillResult:
    """What :func:`distill_arch` returns. Losses are :func:`~nasbert.training.evaluation.whole_model_loss`: MSE
    between the model's final hidden states and the teacher's, over the real tokens of the validation batches."""

    #: the extracted, distilled model (eval mode)
    model: NasBertModel
    valid_loss_before: float
    valid_loss_after: float
    steps: int
    seconds: float


def distill_loss(student: SuperNet, arch: Arch, teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None, *, targets=None) -> torch.Tensor:
    """Mean over blocks of the masked MSE between the chained sub-network's block outputs (at the teacher's
    width) and the teacher's hidden states at the block boundaries (the targets of block-wise training;
    ``targets``: those :class:`~nasbert.training.blockwise.BlockBatch` es when they are already known, e.g. from
    the teacher-state cache)."""
    if targets is None:
        targets = block_batches(teacher, student.space, input_ids, attention_mask, token_type_ids)  # no grad
    _, states = student(input_ids, attention_mask, targets[0].token_type_ids, arch=arch, output_block_states=True)
    losses = [masked_mse(state, t.target, attention_mask) for state, t in zip(states, targets)]
    return torch.stack(losses).mean()


def _optimizer_settings(config: DistillConfig, steps: int) -> TrainConfig:
    """The optimiser and schedule of block-wise training (AdamW with betas (0.9, 0.98), no decay on biases and
    LayerNorms, linear warm-up and decay), with the distillation's learning rate, decay and warm-up."""
    return TrainConfig(steps=max(1, steps), lr=config.lr, weight_decay=config.weight_decay,
                       warmup_steps=config.warmup_steps, schedule="linear", max_grad_norm=config.max_grad_norm)


def _check_corpus(corpus: TokenizedCorpus, config: DistillConfig) -> None:
    if config.steps and corpus.train.shape[0] < config.batch_size:
        raise ConfigError(
            f"the corpus has {corpus.train.shape[0]} training sequences, fewer than distill.batch_size = "
            f"{config.batch_size}: use a bigger corpus or a smaller batch"
        )


def distill_arch(
    supernet: SuperNet,
    arch: Arch,
    teacher,
    corpus: TokenizedCorpus,
    tokenizer,
    *,
    config: DistillConfig,
    seed: int = 0,
    progress: bool = True,
    valid_batches: list[dict] | None = None,
    freeze_adapters: bool = False,
    teacher_cache=None,
) -> DistillResult:
    """Train the sub-network ``arch`` of (a copy of) ``supernet`` end to end against ``teacher``.

    Each of ``config.steps`` steps draws a batch of ``corpus.train`` rows (:class:`~nasbert.data.BatchIterator`
    with ``seed``), corrupts it for MLM (:func:`~nasbert.data.mask_tokens`), and minimises
    :func:`distill_loss`. The teacher runs in eval mode without gradients, the student in train mode (dropout).
    Equal seeds give equal weights. ``valid_batches`` (default: ``config.eval_batches`` fixed batches of
    ``corpus.valid``) give the whole-model loss before and after. ``supernet`` is left exactly as it was; the
    teacher is put in eval mode and must be on the supernet's device. ``freeze_adapters`` trains the layers and
    embeddings only, so adapters that are identities stay identities (a layer-dropped teacher stays a plain BERT).

    >>> result = distill_arch(supernet, Arch.parse("128:mha,ffn,identity,identity|..."), teacher, corpus,
    ...                       tokenizer, config=DistillConfig(steps=200, lr=1e-4), seed=0)  # doctest: +SKIP
    >>> result.valid_loss_before, result.valid_loss_after  # doctest: +SKIP
    (0.412, 0.287)
    """
    start = time.perf_counter()
    supernet.space.validate(arch, allow_teacher=True)
    _check_corpus(corpus, config)  # before the copy and the evaluation
    device = next(supernet.parameters()).device
    teacher.eval()
    if valid_batches is None:
        valid_batches = validation_batches(corpus.valid, tokenizer, batch_size=config.batch_size,
                                           n_batches=config.eval_batches, seed=seed,
                                           mlm_probability=config.mlm_probability)
    valid_batches = [to_device(batch, device) for batch in valid_batches]

    student = copy.deepcopy(supernet)
    before = whole_model_loss(student, teacher, arch, valid_batches)
    logger.info("distilling %s for %d steps; whole-model valid loss before %.4f", arch, config.steps, before)
    distill_in_place(student, arch, teacher, corpus, tokenizer, config=config, seed=seed, progress=progress,
                     freeze_adapters=freeze_adapters, teacher_cache=teacher_cache)
    after = whole_model_loss(student, teacher, arch, valid_batches) if config.steps else before
    seconds = time.perf_counter() - start
    logger.info("distilled %s: whole-model valid loss %.4f -> %.4f (%d steps, %.1f s)", arch, before, after,
                config.steps, seconds)
    with torch.random.fork_rng(devices=[]):  # building the model draws its (overwritten) initial weights
        model = student.extract(arch, drop_identity_adapters=freeze_adapters)
    return DistillResult(model=model, valid_loss_before=before, valid_loss_after=after, steps=config.steps,
                         seconds=seconds)


def distill_in_place(student: SuperNet, arch: Arch, teacher, corpus: TokenizedCorpus, tokenizer, *,
                     config: DistillConfig, seed: int = 0, progress: bool = True,
                     freeze_adapters: bool = False, teacher_cache=None) -> None:
    """The training loop of :func:`distill_arch`, on ``student`` itself (its weights change; it ends in eval
    mode). ``teacher_cache`` (a :class:`~nasbert.training.teacher_cache.TeacherStateCache` of ``corpus.train``)
    supplies each batch's masked input and teacher states instead of the mask generator and the teacher. Equal
    students, arguments and seeds give equal weights: torch's global generator (dropout) is seeded with ``seed``
    inside and given back to the caller afterwards, as is the thread count."""
    if not config.steps:
        return
    student.space.validate(arch, allow_teacher=True)
    _check_corpus(corpus, config)
    # Dropout draws from torch's global generator: seed it for this run, and give the caller's state back.
    with torch_threads(config.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _train(student, arch, teacher, corpus, tokenizer, config, seed=seed, progress=progress,
               freeze_adapters=freeze_adapters, teacher_cache=teacher_cache)


def _train(student: SuperNet, arch: Arch, teacher, corpus: TokenizedCorpus, tokenizer, config: DistillConfig, *,
           seed: int, progress: bool, freeze_adapters: bool, teacher_cache=None) -> None:
    device = next(student.parameters()).device
    teacher.eval()
    # Every trained parameter goes to the optimiser: the ones ``arch`` does not use never get a gradient, and
    # AdamW skips parameters without one, so they stay as they are.
    named = [(name, p) for name, p in student.named_parameters()
             if not (freeze_adapters and name.startswith(("in_adapters.", "out_adapters.")))]
    for p in student.parameters():
        p.requires_grad_(False)
    for _, p in named:
        p.requires_grad_(True)
    optimizer, scheduler = make_optimizer(named, _optimizer_settings(config, config.steps), config.steps)
    parameters = [p for _, p in named]
    batches = BatchIterator(corpus.train.shape[0], config.batch_size, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    special_ids = sorted(set(tokenizer.all_special_ids))
    student.train()
    running = None
    bar = tqdm(total=config.steps, desc="distill", unit="step", disable=not progress, dynamic_ncols=True)
    for _ in range(config.steps):
        indices = batches.next_indices()
        targets = None
        if teacher_cache is not None:  # the masked input and the teacher's states, read from disk
            targets = teacher_cache.batches(indices)
            corrupted = targets[0].inputs
        else:
            corrupted, _ = mask_tokens(corpus.train[indices], vocab_size=student.space.teacher.vocab_size,
                                       mask_token_id=tokenizer.mask_token_id, special_ids=special_ids,
                                       generator=generator, mlm_probability=config.mlm_probability)
            corrupted = corrupted.to(device)
        loss = distill_loss(student, arch, teacher, corrupted, torch.ones_like(corrupted), targets=targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        fault_point("distill.step")
    bar.close()
    student.eval()
