"""Individual commands (per-person ratings, e.g. NYT books): `gpo eval-individuals` and `gpo train-individuals`."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from service.cli.groups import STRICT_HELP, refuse_if_strict
from service.cli.runtime import set_up_logging_and_threads


def load_and_embed_ratings(data: Path | None, settings, prior_rank: int):
    """(dataset, item embeddings [I, D], embedder, feature spec): the ratings JSONL `data` (default: the shipped
    NYT books), every item embedded as prompt + item, and features with the prior of rank `prior_rank`."""
    from service.embedder.embed import build_embedder
    from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION, format_response_item
    from service.gpo.features import FeatureSpec
    from service.training.nytbooks import load_nytbooks
    from service.training.ratings import read_ratings_jsonl

    ds = read_ratings_jsonl(data) if data else load_nytbooks()
    embedder = build_embedder(settings, template_version=RESPONSE_TEMPLATE_VERSION)
    emb = embedder.embed([format_response_item(ds.prompt, it.text) for it in ds.items], progress=True)
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=prior_rank)
    return ds, emb, embedder, spec


def checked_prior_mean(value: str) -> str:
    """`--prior-mean`, refused up front (before any embedding) unless it is auto or one of PRIOR_MEANS."""
    from service.training.individuals.priors import PRIOR_MEANS

    if value not in ("auto", *PRIOR_MEANS):
        raise typer.BadParameter(f"--prior-mean must be one of auto, {', '.join(PRIOR_MEANS)}; got {value!r}")
    return value


PRIOR_MEAN_HELP = (
    "an item's prior mean: auto (reward, or shrunk when it beats reward by more than a standard error in "
    "cross-validation over the training people) | reward | shrunk | items (default: the training config's, auto)"
)


def eval_individuals_cmd(
    data: Annotated[Path | None, typer.Option(help="per-person ratings JSONL (default: shipped NYT books)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the records and choices")] = None,
    report: Annotated[Path | None, typer.Option(help="rewrite the individuals section of this page")] = None,
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0,1,2",
    n_context: Annotated[str, typer.Option(help="comma-separated context sizes")] = "1,2,5,10,20",
    main_context: int = 10,
    train_frac: float = 0.6,
    comparison: Annotated[bool, typer.Option(help="also meta-train and score the comparison kind")] = True,
    max_steps: int = 1500,
    time_budget_s: float = 240.0,
    prior_rank: int = 8,
    loadings: Annotated[str, typer.Option(help="prior loadings: content | ratings")] = "content",
    prior_mean: Annotated[
        str | None,
        typer.Option(help=PRIOR_MEAN_HELP),
    ] = None,
    append: Annotated[
        bool, typer.Option(help="merge into the records already in --json (same method, seed and k: replaced)")
    ] = False,
    threads: int | None = None,
) -> None:
    """Individuals (a person is a group of one): GPO on ratings and on comparisons beside the baselines, on
    held-out people of a per-person ratings dataset."""
    set_up_logging_and_threads(threads)
    prior_mean = checked_prior_mean(prior_mean) if prior_mean is not None else None  # before any embedding
    from service.config import get_settings
    from service.training.data_description import describe_ratings
    from service.training.individuals.evaluate import IndividualEvalConfig, evaluate_individuals
    from service.training.individuals.train import IndividualTrainConfig
    from service.training.individuals_report import write_individuals_report
    from service.training.nytbooks import shipped_nytbooks_path
    from service.training.records import write_json

    t0 = time.perf_counter()
    old = json.loads(json_out.read_text()) if append and json_out and json_out.exists() else None
    ds, emb, embedder, spec = load_and_embed_ratings(data, get_settings(), prior_rank)
    cfg = IndividualEvalConfig(
        train_frac=train_frac,
        seeds=tuple(int(s) for s in seeds.split(",")),
        n_context=tuple(int(k) for k in n_context.split(",")),
        main_context=main_context,
        comparison=comparison,
    )
    tcfg = IndividualTrainConfig(max_steps=max_steps, time_budget_s=time_budget_s, loadings=loadings, patience=8)
    if prior_mean is not None:
        tcfg = replace(tcfg, prior_mean=prior_mean)
    context = {
        "main_context": main_context,
        "train_frac": train_frac,
        "embedder": embedder.key_prefix,
        "features": spec.to_dict(),
        "train_config": asdict(tcfg),
        "data": describe_ratings(ds, data or shipped_nytbooks_path()),  # what the page says about the data
    }

    def with_old(records: list[dict], meta: dict, complete: bool) -> tuple[list[dict], dict]:
        """This run's records and meta so far, merged into the old file's with --append (same method, seed and k:
        replaced); `complete` says whether every seed of this run is in."""
        meta = {**meta, **context, "chosen": dict(meta["chosen"]), "training": dict(meta["training"])}
        meta["seeds_done"] = sorted({r["seed"] for r in records})
        meta["complete"] = complete
        command = "gpo " + " ".join(sys.argv[1:])
        if old is not None:
            new_keys = {(r["method"], r["seed"], r["n_context"]) for r in records}
            records = [r for r in old["records"] if (r["method"], r["seed"], r["n_context"]) not in new_keys] + records
            for part in ("chosen", "training"):
                meta[part] = {**old["meta"].get(part, {}), **meta[part]}
            command = f"{old['meta']['command']}; then {command}"
            meta["wall_s_before"] = old["meta"]["wall_s"] + old["meta"].get("wall_s_before", 0.0)
        meta["command"] = command
        meta["wall_s"] = time.perf_counter() - t0 + meta.get("wall_s_before", 0.0)
        return list(records), meta

    def save_seed(records: list[dict], meta: dict) -> None:
        """After each seed: the file holds every finished seed (written atomically), so an interrupted run keeps
        them; `--append` with the missing seeds finishes it."""
        if json_out:
            merged, merged_meta = with_old(records, meta, complete=False)
            write_json(json_out, {"records": merged, "meta": merged_meta})

    records, meta = with_old(*evaluate_individuals(ds, emb, spec, cfg, tcfg, on_seed=save_seed), complete=True)
    for k in cfg.n_context:
        rows = [r for r in records if r["n_context"] == k]
        typer.echo(
            f"\n{k} context items: "
            + ", ".join(
                f"{m} {np.mean([r['pairwise'] for r in rows if r['method'] == m]):.4f}"
                for m in dict.fromkeys(r["method"] for r in rows)
            )
        )
    if report:
        typer.echo(f"wrote {write_individuals_report(records, meta, report)}")
    if json_out:
        write_json(json_out, {"records": records, "meta": meta})
        typer.echo(f"wrote {json_out}")


def train_individuals_cmd(
    data: Annotated[Path | None, typer.Option(help="per-person ratings JSONL (default: shipped NYT books)")] = None,
    name: Annotated[str, typer.Option(help="checkpoint name under the model store")] = "nytbooks-rating",
    max_steps: int = 1500,
    time_budget_s: float = 300.0,
    prior_rank: int = 8,
    ridge_init: Annotated[
        float, typer.Option(help="starting strength of the ridge readout (cross-validation's choice on NYT books)")
    ] = 10.0,
    reward_lambda: Annotated[
        float, typer.Option(help="ridge of the reward model that gives every item its prior mean")
    ] = 1.0,
    prior_mean: Annotated[
        str | None,
        typer.Option(help=PRIOR_MEAN_HELP),
    ] = None,
    kind: Annotated[
        str, typer.Option(help="rating | comparison (on pairs of items a person rated differently)")
    ] = "rating",
    head: Annotated[
        str,
        typer.Option(
            help="comparison kind: 'score' (a score per response, Bradley-Terry loss) or 'pair' (appendix H: "
            "P(a preferred) per pair)"
        ),
    ] = "score",
    pair_readout: Annotated[
        bool,
        typer.Option(
            help="comparison kind, score head: start each response's score at the reward model plus the taste the "
            "context pairs give in closed form (one Newton step of a ridge logistic fit)"
        ),
    ] = True,
    seed: int = 0,
    threads: int | None = None,
    strict: Annotated[bool, typer.Option(help=STRICT_HELP)] = False,
) -> None:
    """Meta-train a rating (or comparison) GPO on every person of a ratings dataset (15% of them for validation)
    and save a servable checkpoint (model, feature spec, item prior bank, content basis).

    --time-budget-s is wall-clock time from the command's start: set-up and embedding spend it too."""
    from service.training.budget import Budget

    budget = Budget(time_budget_s)
    if kind not in ("rating", "comparison"):
        raise typer.BadParameter(f"kind is rating or comparison, not {kind!r}")
    if head not in ("score", "pair"):
        raise typer.BadParameter(f"head is score or pair, not {head!r}")
    set_up_logging_and_threads(threads)
    prior_mean = checked_prior_mean(prior_mean) if prior_mean is not None else None  # before any embedding
    from service.config import get_settings
    from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION
    from service.gpo.checkpoint import save_checkpoint
    from service.training.individuals.export import rating_checkpoint
    from service.training.individuals.splits import split_people
    from service.training.individuals.train import IndividualTrainConfig, train_individual_gpo

    settings = get_settings()
    ds, emb, embedder, spec = load_and_embed_ratings(data, settings, prior_rank)
    split = split_people(ds.people, 1.0, seed)
    cfg = IndividualTrainConfig(
        max_steps=max_steps,
        time_budget_s=time_budget_s,
        seed=seed,
        patience=8,
        progress=True,
        reward_lambda=reward_lambda,
        pair_readout=pair_readout,
    )
    if prior_mean is not None:
        cfg = replace(cfg, prior_mean=prior_mean)
    train_kind = "comparison_bt" if kind == "comparison" and head == "score" else kind
    result = train_individual_gpo(ds, emb, split, spec, cfg, train_kind, {"ridge_init": ridge_init}, budget)
    refuse_if_strict(strict, result.shortfall)
    embedder_meta = {
        "key_prefix": embedder.key_prefix,
        "name": settings.embedder,
        "pooling": settings.pooling,
        "template_version": RESPONSE_TEMPLATE_VERSION,
        "dim": int(emb.shape[1]),
    }
    data_meta = {
        "data": {"path": str(data) if data else "shipped nytbooks", "people": len(ds.people), "items": len(ds.items)}
    }
    out = save_checkpoint(rating_checkpoint(result, ds, emb, embedder_meta, data_meta), settings.model_store, name)
    typer.echo(f"saved {out} (best validation pairwise {result.best_val:.4f} at step {result.best_step})")
