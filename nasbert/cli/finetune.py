"""``nasbert finetune``: fine-tune an exported model (or any HF BERT, e.g. the teacher) on a GLUE task or on
a CSV / JSONL task of one's own.

::

    nasbert finetune runs/default/family/nasbert-2x-17.0M --task sst2 --data-dir ../glue --out ft/2x-sst2
    nasbert finetune builtin --task cola --data-dir ../glue --out ft/teacher-cola        # the teacher itself
    nasbert finetune MODEL --task sst2 --data-dir ../glue --kd-teacher ft/teacher-sst2/model --out ft/kd
    nasbert references build --task sst2 --data-dir ../glue --teacher builtin --out refs/sst2
    nasbert finetune MODEL --task sst2 --data-dir ../glue --references refs/sst2 --out ft/refbert   # RefBERT
    nasbert finetune MODEL --task stsb --data-dir ../glue --pair-encoding bi --out ft/stsb-bi  # texts apart
    nasbert finetune MODEL --task reviews --train-file train.csv --dev-file dev.csv \\
        --text-columns text --label-column stars --out ft/reviews
"""

from __future__ import annotations

import argparse
import json
import logging

__all__ = ["build_finetune_parser", "run_finetune"]

logger = logging.getLogger("nasbert")


def build_finetune_parser(p: argparse.ArgumentParser) -> None:
    from ..finetune.trainer import AUTO_EXTEND, AUTO_LRS, FinetuneConfig

    d = FinetuneConfig()
    p.add_argument("model", help="model directory (a family member, an HF BERT), 'builtin' (the built-in teacher) "
                                 "or a hub id")
    p.add_argument("--task", required=True,
                   help="GLUE task (sst2, cola, mrpc, rte, stsb, qnli, qqp, mnli) or, with --train-file, a name "
                        "for your own task")
    p.add_argument("--out", required=True, help="output directory (model/, metrics.json, checkpoint while running)")
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", help="GLUE TSV directory (<DIR>/SST-2/train.tsv, dev.tsv, ...); default: the "
                                         "hub (datasets.load_dataset('nyu-mll/glue', TASK))")
    data.add_argument("--train-file", help="your own task: CSV, TSV or JSONL training file")
    data.add_argument("--dev-file", help="your own task: the evaluation file (same format)")
    data.add_argument("--text-columns", nargs="+", help="your own task: one or two text columns")
    data.add_argument("--label-column", help="your own task: the label column")
    data.add_argument("--regression", action="store_true", help="your own task: real-valued labels")
    data.add_argument("--max-train-examples", type=int,
                      help="a fixed random subset of the training set (the same for every --seed)")
    recipe = p.add_argument_group("recipe")
    recipe.add_argument("--epochs", type=float, default=d.epochs, help=f"(default {d.epochs:g})")
    recipe.add_argument("--lr", type=float, nargs="+", metavar="LR",
                        help="peak learning rate; two or more: a grid, one run per rate in OUT/lr-<rate>/, the best "
                             "final dev score chosen (OUT/lr_grid.json). Default: for a nasbert model the grid "
                             f"{' '.join(f'{x:g}' for x in AUTO_LRS)}, then {' '.join(f'{x:g}' for x in AUTO_EXTEND)} "
                             f"while the largest wins (small members want large rates); for any other model {d.lr:g}")
    recipe.add_argument("--lr-extend", type=float, nargs="+", default=[], metavar="LR",
                        help="larger rates tried in turn after the grid, each only while the largest rate so far "
                             "is the best")
    recipe.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    recipe.add_argument("--max-seq-len", type=int, default=d.max_seq_len, help=f"(default {d.max_seq_len})")
    recipe.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help=f"(default {d.warmup_ratio:g})")
    recipe.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"(default {d.weight_decay:g})")
    recipe.add_argument("--evals-per-epoch", type=int, default=d.evals_per_epoch,
                        help=f"dev evaluations per epoch (default {d.evals_per_epoch}; 0: one, after the last step)")
    recipe.add_argument("--seed", type=int, default=d.seed, help="seeds the new head, dropout and data order")
    recipe.add_argument("--pooling", choices=["auto", "cls", "mean"], default=d.pooling,
                        help="what the classifier reads: the [CLS] token or the mean of the real tokens (nasbert "
                             "models only); auto (default): mean for nasbert models, cls for others")
    recipe.add_argument("--pair-encoding", choices=["cross", "bi"], nargs="+", default=[d.pair_encoding],
                        help="pair tasks: cross (default) reads the two texts as one sequence, as BERT; bi encodes "
                             "each apart and classifies [u, v, |u-v|, u*v] (Sentence-BERT's classifier; nasbert "
                             "models only): for the smallest members it is the better of the two "
                             "(docs/benchmarks.md), and the model then takes input_ids_b / attention_mask_b. "
                             "cross bi: both, each over the rates, the best kept (OUT/lr-<rate>-bi/ for bi)")
    recipe.add_argument("--threads", type=int, default=d.threads, help="torch threads (default: torch's choice)")
    recipe.add_argument("--device", default="auto",
                        help="where to train: auto (default: a CUDA GPU where torch sees one, else the CPU), cpu, "
                             "cuda or cuda:N; the model is written and its ONNX graphs scored on the CPU")
    kd = p.add_argument_group("prediction-layer distillation")
    kd.add_argument("--kd-teacher", help="a teacher fine-tuned on the same task (the model/ directory of its "
                                         "nasbert finetune output)")
    kd.add_argument("--kd-lambda", type=float, default=d.kd_lambda,
                    help=f"loss = (1 - lambda) CE + lambda KL (default {d.kd_lambda:g})")
    kd.add_argument("--kd-temperature", type=float, default=d.kd_temperature, help=f"(default {d.kd_temperature:g})")
    ref = p.add_argument_group("reference samples (RefBERT)")
    ref.add_argument("--references", metavar="POOL_DIR",
                     help="a reference pool (nasbert references build): the model's first mha layer also attends "
                          "over the teacher's pre-computed states of each input's most similar pool sample; "
                          "OUT/model/references/ gets a copy of the pool (nasbert models only)")
    p.add_argument("--no-onnx", action="store_true", help="do not write model/model.onnx (nor its int8 graph)")
    p.add_argument("--no-int8", action="store_true",
                   help="do not write model/model.int8.onnx (ONNX Runtime dynamic int8, scored on the dev set)")
    p.add_argument("--force", action="store_true", help="start again in an existing output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def run_finetune(args: argparse.Namespace) -> int:
    """Bad input (task data, model, settings) raises TaskError / FinetuneError / ConfigError: the CLI prints the
    message and exits 1."""
    from ..finetune.tasks import TaskError, load_generic_task, load_task
    from ..finetune.trainer import AUTO_EXTEND, AUTO_LRS, FinetuneConfig, finetune, finetune_lr_grid, \
        is_nasbert_model

    nasbert = is_nasbert_model(args.model)
    lrs, extend, encodings = args.lr, args.lr_extend, list(dict.fromkeys(args.pair_encoding))
    if lrs is None:  # the default: a grid for nasbert models, whose best rate depends on their depth
        lrs, extend = (list(AUTO_LRS), [*AUTO_EXTEND, *extend]) if nasbert else ([FinetuneConfig.lr], extend)
    config = FinetuneConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=lrs[0], weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, max_seq_len=args.max_seq_len, max_train_examples=args.max_train_examples,
        evals_per_epoch=args.evals_per_epoch, seed=args.seed, kd_lambda=args.kd_lambda,
        kd_temperature=args.kd_temperature, threads=args.threads, pooling=args.pooling,
        pair_encoding=encodings[0])
    generic = (args.train_file, args.dev_file, args.text_columns, args.label_column)
    if any(x is not None for x in generic):
        if any(x is None for x in generic):
            raise TaskError("your own task needs --train-file, --dev-file, --text-columns and --label-column")
        task = load_generic_task(train_file=args.train_file, dev_file=args.dev_file, text_columns=args.text_columns,
                                 label_column=args.label_column, regression=args.regression, name=args.task,
                                 max_train_examples=config.max_train_examples, seed=0)
    else:
        task = load_task(args.task, data_dir=args.data_dir, max_train_examples=config.max_train_examples,
                         seed=0)  # one fixed subset for every --seed
    settings = dict(config=config, kd_teacher=args.kd_teacher, references=args.references, onnx=not args.no_onnx,
                    int8_graph=not args.no_int8, force=args.force, progress=not args.no_progress,
                    device=args.device)
    if nasbert and len(task.task.text_fields) == 2 and encodings == ["cross"] and args.references is None:
        logger.info("a pair task: the smaller members often read it better with each text apart; try "
                    "--pair-encoding cross bi")
    grid = None
    if len(set(lrs)) > 1 or len(encodings) > 1 or extend:
        grid = finetune_lr_grid(args.model, task, out=args.out, lrs=lrs, pair_encodings=encodings, extend=extend,
                                **settings)
        result = grid.best
    else:
        result = finetune(args.model, task, out=args.out, **settings)
    if args.json:
        int8 = json.loads((result.out / "metrics.json").read_text()).get("int8")
        grid_keys = {} if grid is None else {"lr": grid.lr, "pair_encoding": grid.pair_encoding,
                                             "lr_grid": grid.scores, "model": str(result.model_dir)}
        print(json.dumps({"out": str(result.out if grid is None else grid.out), **grid_keys, "dev": result.metrics,
                          "best": result.best, "int8_dev": None if int8 is None else int8["dev"]}, indent=2))
    elif grid is not None:
        scores = ", ".join(f"lr {k}: {v:.4f}" for k, v in grid.scores.items())
        best = f"lr {grid.lr:g}" + ("" if grid.pair_encoding == "cross" else f", {grid.pair_encoding}")
        print(f"{task.task.name}: {task.task.main_metric} at {scores}; the best, {best}: model in "
              f"{result.model_dir}")
    else:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        print(f"{task.task.name}: {metrics} ({result.steps} steps, {result.seconds:.0f} s); "
              f"model in {result.model_dir}")
    return 0
