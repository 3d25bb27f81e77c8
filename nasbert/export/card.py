"""The model card (``README.md``) of one family member: Hugging Face front matter, the architecture, and the
member's measured numbers, all taken from ``family.json`` (nothing here is estimated or invented).

>>> write_model_card(family.member("x4"), family, "family/x4")  # doctest: +SKIP
PosixPath('family/x4/README.md')
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io import atomic_write_text
from ..space import Arch
from .family import Family, FamilyMember

__all__ = ["model_card", "write_model_card"]

FRONT_MATTER = """---
library_name: transformers
tags:
- nasbert
- bert
- distillation
- neural-architecture-search
pipeline_tag: feature-extraction
---
"""


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f} ms"


def _loss(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _distill_note(member: FamilyMember) -> list[str]:
    if not member.distill_steps:
        return []
    text = (f"After the search chose it, the model was trained further as a whole against the teacher for "
            f"{member.distill_steps} steps (whole-model distillation: every block's output matched to the teacher's "
            f"hidden states, each block reading the previous student block); validation loss "
            f"{_loss(member.valid_loss_before_distill)} before, {_loss(member.valid_loss)} after.")
    return [text, ""]


def _has_tokenizer(directory: Path) -> bool:
    return any((directory / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json", "vocab.txt"))


def model_card(member: FamilyMember, family: Family, *, space_summary: str | None = None,
               tokenizer: bool = True) -> str:
    """The card's text. ``tokenizer``: whether the model directory ships tokenizer files (the snippets use them)."""
    d = family.device
    arch = Arch.from_dict(member.arch)
    where = f"`{d['key']}` ({d['engine']}, {d['threads']} thread{'s' if d['threads'] != 1 else ''}, " \
            f"batch {d['batch']}, sequence length {d['seq_len']})"
    lines = [
        FRONT_MATTER,
        f"# {member.name}",
        "",
        (f"A compressed, task-agnostic BERT found by nasbert for the budget **{member.budget}**: "
         + (f"sub-layers of the teacher `{family.teacher}`, chosen by the search over its heads, FFN neurons and "
            "layers, "
            + ("its pruned attentions and FFNs calibrated on unlabelled text (the heads and neurons whose output "
               "matters most, output weights refitted by least squares)" if member.extra.get("calibration") else
               "kept as they are")
            if member.source == "teacher" else
            f"distilled from the teacher `{family.teacher}` through a weight-sharing supernet (NAS-BERT, Xu et al. "
            "2021)")
         + ", picked among the search's candidates on measured latency. Its output is the teacher's hidden size, "
         "so it replaces the teacher as a feature extractor or as the body of a fine-tuned model."),
        "",
        *([f"Why this model: {member.choice}.", ""] if member.choice else []),
        *_distill_note(member),
        "## Numbers",
        "",
        f"Measured on {where}.",
        "",
        "| | |",
        "|---|---|",
        f"| budget | {member.budget} |",
        f"| parameters | {member.params:,} |",
        f"| FLOPs (one sequence of {d['seq_len']} tokens) | {member.flops:,} |",
        f"| latency, measured | {_ms(member.latency_ms)} |",
        f"| latency, predicted | {_ms(member.predicted_latency_ms)} |",
        f"| teacher latency, measured | {_ms(family.teacher_latency_ms)} |",
        f"| speed-up over the teacher | {member.speedup:.2f}x |",
        *([f"| int8 graph (`model.int8.onnx`), measured | {_ms(member.int8_latency_ms)}"
           + (f", {member.int8_speedup:.2f}x over the fp32 teacher" if member.int8_speedup else "")
           + f"; relative output error {member.int8_error:.3f} |"] if member.int8_onnx else []),
        f"| weights | {'the teacher' if member.source == 'teacher' else 'the trained supernet'} |",
        f"| proxy loss (block-wise distillation) | {_loss(member.proxy_loss)} |",
        f"| cosine to the teacher's final states (the export's ranking) | {_loss(member.cosine)} |",
        *([f"| validation loss before whole-model distillation | {_loss(member.valid_loss_before_distill)} |"]
          if member.distill_steps else []),
        f"| validation loss | {_loss(member.valid_loss)} |",
        "",
        "## Architecture",
        "",
        f"{len(arch.blocks)} blocks, {arch.num_layers} layers (identity slots are skipped).",
        "",
        "| block | width | ops |",
        "|---|---|---|",
        *(f"| {n} | {b.width} | {', '.join(b.ops)} |" for n, b in enumerate(arch.blocks)),
        "",
        f"Compact form: `{arch}`",
        "",
    ]
    if space_summary:
        lines += ["## Search space", "", "```text", space_summary.rstrip(), "```", ""]

    repo = f"path/to/{Path(member.path).name}"
    tok = (f'tokenizer = AutoTokenizer.from_pretrained("{repo}")' if tokenizer
           else f'tokenizer = AutoTokenizer.from_pretrained("{family.teacher}")  # the teacher\'s tokenizer')
    lines += [
        "## Usage",
        "",
        "With transformers alone (the modeling code ships in this directory):",
        "",
        "```python",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)',
        tok,
        'inputs = tokenizer(["A sentence to embed."], return_tensors="pt")',
        "hidden = model(**inputs).last_hidden_state  # (batch, tokens, hidden)",
        "```",
        "",
        "With nasbert installed, no remote code is needed:",
        "",
        "```python",
        "import nasbert  # registers the nasbert model type with transformers",
        "from transformers import AutoModel",
        "",
        f'model = AutoModel.from_pretrained("{repo}")',
        "```",
        "",
    ]
    if member.onnx is not None:
        onnx_name = Path(member.onnx).name
        lines += [
            "With ONNX Runtime (the latency above was measured this way):",
            "",
            "```python",
            "import numpy as np",
            "import onnxruntime as ort",
            "from transformers import AutoTokenizer",
            "",
            tok,
            f'session = ort.InferenceSession("{repo}/{onnx_name}", providers=["CPUExecutionProvider"])',
            'enc = tokenizer(["A sentence to embed."], return_tensors="np")',
            'feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}',
            "hidden = session.run(None, feeds)[0]  # last_hidden_state",
            "```",
            "",
        ]
    lines += [
        "## Fine-tuning",
        "",
        "```bash",
        f"nasbert finetune {repo} --task sst2 --out ft/sst2          # GLUE from the hub, or --data-dir DIR",
        f"nasbert finetune {repo} --task stsb --pair-encoding cross bi --out ft/stsb   # a pair task",
        "```",
        "",
        "Without `--lr` it tries the rates 2e-4 and 5e-4 (then 1e-3 while 5e-4 wins) and keeps the best: compressed "
        "members want larger rates than BERT's usual 5e-5. On a pair task, `--pair-encoding cross bi` also tries "
        "reading each text apart (Sentence-BERT's classifier), which the smallest members often do better.",
        "",
    ]
    entry = {"member": member.to_dict(), "device": family.device, "teacher": family.teacher,
             "teacher_latency_ms": family.teacher_latency_ms}
    lines += [
        "## Provenance",
        "",
        f"Written by nasbert {family.nasbert_version or '(unknown version)'}"
        + (f" on {family.created}" if family.created else "") + ". The entry of `family.json`:",
        "",
        "```json",
        json.dumps(entry, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(member: FamilyMember, family: Family, directory: str | os.PathLike, *,
                     space_summary: str | None = None) -> Path:
    """Write ``directory/README.md`` (atomically) and return its path."""
    directory = Path(directory)
    path = directory / "README.md"
    atomic_write_text(path, model_card(member, family, space_summary=space_summary,
                                       tokenizer=_has_tokenizer(directory)))
    return path
