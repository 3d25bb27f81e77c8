"""ONNX export of extracted models (and of single ops, for the latency table). The only module that imports
onnx; ONNX Runtime is imported here and in the latency engines.

>>> export_onnx(supernet.extract(arch), "family/small/model.onnx")  # doctest: +SKIP
{'max_abs_diff': 1.9e-06}
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["INPUT_NAMES", "INT8_MAX_ERROR", "PAIR_INPUT_NAMES", "REFERENCE_INPUT_NAMES", "OnnxParityError",
           "export_int8", "export_module", "export_onnx", "int8_error", "onnx_parity", "quantize_int8"]

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
#: the extra inputs of a model with RefBERT references (``config.reference_size``): (B, R, H) float, (B, R) int64
REFERENCE_INPUT_NAMES = ("reference_states", "reference_mask")
#: the extra inputs of a classifier that encodes a pair's texts apart (``config.pair_encoding == "bi"``): the
#: second text's ids and mask, (B, T_b) int64
PAIR_INPUT_NAMES = ("input_ids_b", "attention_mask_b")
OPSET = 17


class OnnxParityError(RuntimeError):
    """The exported graph does not compute what the PyTorch model computes."""


class _Output(nn.Module):
    """``model(input_ids, attention_mask, token_type_ids[, reference_states, reference_mask][, input_ids_b,
    attention_mask_b]).<output>`` as a plain tensor function; positional inputs in the order of
    :func:`_input_names`."""

    def __init__(self, model: nn.Module, output: str = "last_hidden_state"):
        super().__init__()
        self.model = model
        self.output = output
        self.names = _input_names(model)
        self.train(model.training)  # a new module is in training mode; take the model's, so it is restored

    def forward(self, *args, **kwargs):
        out = self.model(**dict(zip(self.names, args)), **kwargs)
        return getattr(out, self.output)


def _reference_size(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "reference_size", None)


def _bi_pairs(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "pair_encoding", "cross") == "bi"


def _input_names(model: nn.Module) -> tuple[str, ...]:
    """The graph's inputs, in order: BERT's three, then RefBERT's references or a bi-encoder's second text."""
    return (INPUT_NAMES + (REFERENCE_INPUT_NAMES if _reference_size(model) else ())
            + (PAIR_INPUT_NAMES if _bi_pairs(model) else ()))


def export_module(
    module: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    output_name: str = "output",
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> Path:
    """Export ``module(*inputs.values())`` to ``path`` (written atomically), in eval mode; the module's mode is
    restored afterwards."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                module, tuple(inputs.values()), tmp, input_names=list(inputs), output_names=[output_name],
                dynamic_axes=dict(dynamic_axes or {}), opset_version=OPSET, do_constant_folding=True,
                dynamo=False,
            )
        onnx.checker.check_model(tmp)
        os.replace(tmp, path)
    finally:
        module.train(was_training)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _example_inputs(model: nn.Module, batch: int, seq_len: int, *, pad: bool, seed: int = 0,
                    references: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(1, vocab, (batch, seq_len), generator=g)
    mask = torch.ones_like(ids)
    if pad and batch > 1:
        mask[-1, seq_len // 2:] = 0  # the last sequence is half padding
    types = torch.zeros_like(ids)
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    size = _reference_size(model)
    if size:  # RefBERT: `references` reference tokens per sequence, the last sequence's half padding
        ref_mask = torch.ones(batch, references, dtype=torch.long)
        if pad and batch > 1:
            ref_mask[-1, references // 2 + 1:] = 0
        inputs.update(reference_states=torch.randn(batch, references, size, generator=g), reference_mask=ref_mask)
    if _bi_pairs(model):  # the second text: another length than the first, the last sequence's half padding
        length = max(2, seq_len - seq_len // 4)
        mask_b = torch.ones(batch, length, dtype=torch.long)
        if pad and batch > 1:
            mask_b[-1, length // 2:] = 0
        inputs.update(input_ids_b=torch.randint(1, vocab, (batch, length), generator=g), attention_mask_b=mask_b)
    return inputs


def onnx_parity(model: nn.Module, path: str | os.PathLike, *, batch: int = 2, seq_len: int = 16,
                output: str = "last_hidden_state") -> float:
    """Largest |ONNX Runtime - PyTorch| of ``output`` (over real tokens for per-token outputs), on a padded
    random batch."""
    inputs = _example_inputs(model, batch, seq_len, pad=True, seed=1, references=6)
    got = _run_onnx(path, inputs)  # feeds only the graph's inputs: one the model does not read may be left out
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = _Output(model, output)(**inputs).numpy()
    model.train(was_training)
    diff = np.abs(got - expected)
    if diff.ndim == 3:  # (B, T, H): padding positions carry no meaning
        diff = diff[inputs["attention_mask"].bool().numpy()]
    return float(diff.max())


def export_onnx(model: nn.Module, path: str | os.PathLike, *, atol: float = 1e-4, check: bool = True,
                output: str = "last_hidden_state") -> dict:
    """Export a ``NasBertModel`` (or any HF encoder returning ``last_hidden_state``) with dynamic batch and
    sequence axes; inputs ``input_ids``, ``attention_mask``, ``token_type_ids``; output ``last_hidden_state``.
    A sequence classifier exports with ``output="logits"`` (output shape (batch, num_labels)). A model with
    RefBERT references (``config.reference_size``) takes two more inputs, ``reference_states`` (batch,
    references, reference_size) float and ``reference_mask`` (batch, references) int64, dynamic in both axes; a
    classifier that encodes a pair's texts apart (``config.pair_encoding == "bi"``) takes the second text as
    ``input_ids_b`` and ``attention_mask_b`` (batch, sequence_b) int64.

    With ``check``, ONNX Runtime's output is compared with PyTorch's on a padded batch of another shape than
    the one traced; a difference above ``atol`` raises :class:`OnnxParityError` and removes the file.
    """
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    if _reference_size(model):
        axes.update({name: {0: "batch", 1: "references"} for name in REFERENCE_INPUT_NAMES})
    if _bi_pairs(model):
        axes.update({name: {0: "batch", 1: "sequence_b"} for name in PAIR_INPUT_NAMES})
    axes[output] = {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}
    example = _example_inputs(model, 1, 8, pad=False)
    export_module(_Output(model, output), example, path, output_name=output, dynamic_axes=axes)
    report = {}
    if check:
        diff = onnx_parity(model, path, output=output)
        if not diff <= atol:
            Path(path).unlink(missing_ok=True)
            raise OnnxParityError(f"ONNX export of {type(model).__name__} differs from PyTorch by {diff:.2e} "
                                  f"(> atol {atol:.0e}); the file was removed")
        report["max_abs_diff"] = diff
    return report


#: the largest relative error an int8 graph may have and still be written: ||int8 - fp32|| / ||fp32|| of the
#: output over the real tokens of a padded random batch (docs/benchmarks.md, int8 section, has the measured errors)
INT8_MAX_ERROR = 0.25


def _run_onnx(path: str | os.PathLike, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.numpy() for k, v in inputs.items() if k in names})[0]


def int8_error(model: nn.Module, fp32_path: str | os.PathLike, int8_path: str | os.PathLike, *, batch: int = 4,
               seq_len: int = 32) -> float:
    """||int8 - fp32|| / ||fp32|| of the two graphs' outputs (over real tokens for per-token outputs), on a padded
    random batch of ``model``'s vocabulary."""
    inputs = _example_inputs(model, batch, seq_len, pad=True, seed=2, references=6)
    want, got = _run_onnx(fp32_path, inputs), _run_onnx(int8_path, inputs)
    if want.ndim == 3:
        keep = inputs["attention_mask"].bool().numpy()
        want, got = want[keep], got[keep]
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))


def quantize_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike) -> None:
    """ONNX Runtime's dynamic quantisation, as every int8 graph of nasbert is made: int8 weights of every MatMul
    and Gemm, per output channel; activations quantised at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with contextlib.redirect_stdout(io.StringIO()):
        # a graph fused by ONNX Runtime's optimiser has operators shape inference cannot type: their outputs are fp32
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def export_int8(model: nn.Module, fp32_path: str | os.PathLike, int8_path: str | os.PathLike, *,
                max_error: float = INT8_MAX_ERROR) -> dict:
    """:func:`quantize_int8` of the exported fp32 graph at ``fp32_path``, written to ``int8_path`` (atomically)
    only when its relative output error (:func:`int8_error`) is at most ``max_error``; otherwise raises
    :class:`OnnxParityError` and writes nothing. Returns ``{"error": ..., "bytes": ...}``."""
    int8_path = Path(int8_path)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", prefix=".int8-", dir=int8_path.parent)
    os.close(fd)
    try:
        quantize_int8(fp32_path, tmp)
        error = int8_error(model, fp32_path, tmp)
        if not error <= max_error:
            raise OnnxParityError(f"the int8 graph of {type(model).__name__} is {error:.3f} off its fp32 graph "
                                  f"(relative error, bound {max_error}); not written")
        os.replace(tmp, int8_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"error": error, "bytes": int8_path.stat().st_size}
