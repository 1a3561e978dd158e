"""`gpo` command line: import datasets, embed, meta-train and evaluate (offline work)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

app = typer.Typer(help="gpo-serve: Group Preference Optimization, offline tools.", no_args_is_help=True)
import_app = typer.Typer(help="Import datasets into the generic JSONL format.", no_args_is_help=True)
app.add_typer(import_app, name="import")
keys_app = typer.Typer(
    help="API keys of tenants (the database of GPO_DATABASE_URL; it is migrated first).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

log = logging.getLogger("gpo")


def _setup(threads: int | None) -> None:
    import torch

    from service.config import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    n = threads or get_settings().torch_threads
    if n:
        torch.set_num_threads(n)


def _load_data(data: Path | None):
    from service.training.jsonl import read_jsonl
    from service.training.opinionqa import load_opinionqa, shipped_opinionqa_path

    path = data or shipped_opinionqa_path()
    ds = read_jsonl(data) if data else load_opinionqa()
    return ds, path, hashlib.sha256(path.read_bytes()).hexdigest()


def _embed(ds):
    from service.config import get_settings
    from service.embedder.embed import build_embedder
    from service.training.items import embed_dataset

    embedder = build_embedder(get_settings())
    return embed_dataset(ds, embedder, progress=True), embedder


@import_app.command("opinionqa")
def import_opinionqa_cmd(
    root: Annotated[Path, typer.Argument(help="OpinionQA human_resp folder")],
    out: Annotated[Path, typer.Argument(help="output .jsonl or .jsonl.gz")],
) -> None:
    """Convert the OpinionQA folder layout to the generic JSONL format."""
    from service.training.opinionqa import import_opinionqa_to

    ds = import_opinionqa_to(root, out)
    typer.echo(f"wrote {out}: {len(ds.groups)} groups, {len(ds.questions)} questions")


@import_app.command("nytbooks")
def import_nytbooks_cmd(
    root: Annotated[Path, typer.Argument(help="NYT books folder (data.json, individual_annotations/)")],
    out: Annotated[Path, typer.Argument(help="output .jsonl or .jsonl.gz (per-person ratings format)")],
    on_rating_conflict: Annotated[
        str, typer.Option(help="two different ratings of one book by one person: raise | drop | first | last")
    ] = "raise",
    on_attribute_conflict: Annotated[
        str, typer.Option(help="two different values of one demographic attribute: drop | raise | first | last")
    ] = "drop",
) -> None:
    """Convert the NYT books per-annotator ratings to the per-person ratings JSONL format."""
    from service.training.nytbooks import import_nytbooks_to
    from service.training.ratings import summary_lines

    choices = ("raise", "drop", "first", "last")
    for name, value in (
        ("--on-rating-conflict", on_rating_conflict),
        ("--on-attribute-conflict", on_attribute_conflict),
    ):
        if value not in choices:
            raise typer.BadParameter(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    try:
        ds, notes = import_nytbooks_to(
            root, out, on_rating_conflict=on_rating_conflict, on_attribute_conflict=on_attribute_conflict
        )
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {out}")
    for line in [*summary_lines(ds), *notes.lines()]:
        typer.echo(line)


@app.command()
def embed(data: Annotated[Path | None, typer.Option(help="dataset JSONL (default: shipped OpinionQA)")] = None) -> None:
    """Embed every item of a dataset into the on-disk cache."""
    _setup(None)
    ds, _, _ = _load_data(data)
    table, embedder = _embed(ds)
    typer.echo(f"{table.n_items} items embedded ({embedder.key_prefix})")


@app.command()
def train(
    data: Annotated[Path | None, typer.Option(help="dataset JSONL (default: shipped OpinionQA)")] = None,
    name: Annotated[str, typer.Option(help="checkpoint name under the model store")] = "opinionqa-gpo",
    exclude_group: Annotated[list[str] | None, typer.Option(help="leave this group out of training")] = None,
    seed: int = 0,
    max_steps: int = 1200,
    time_budget_s: float = 600.0,
    use_prior: bool = True,
    use_embedding: bool = True,
    prior_rank: int = 8,
    readout: Annotated[str, typer.Option(help="prior readout: none | mean | ridge")] = "ridge",
    threads: int | None = None,
) -> None:
    """Meta-train GPO on the dataset's groups (validation groups drawn from them) and save a checkpoint."""
    _setup(threads)
    from service.config import get_settings
    from service.embedder.prompts import TEMPLATE_VERSION
    from service.gpo.checkpoint import Checkpoint, PriorBank, save_checkpoint
    from service.gpo.features import FeatureSpec
    from service.gpo.prior import question_key
    from service.training.fit import TrainConfig, config_dict, train_gpo
    from service.training.splits import scorable_question_ids, validation_groups

    settings = get_settings()
    ds, path, data_hash = _load_data(data)
    groups = [g for g in ds.groups if g not in set(exclude_group or [])]
    unknown = set(exclude_group or []) - set(ds.groups)
    if unknown:
        raise typer.BadParameter(f"unknown groups {sorted(unknown)}; known: {ds.groups}")
    table, embedder = _embed(ds)
    qids = scorable_question_ids(ds, groups)
    fit, val = validation_groups(groups, seed)
    spec = FeatureSpec(
        emb_dim=table.emb.shape[1], use_embedding=use_embedding, use_prior=use_prior, prior_rank=prior_rank
    )
    cfg = TrainConfig(max_steps=max_steps, time_budget_s=time_budget_s, seed=seed, prior_readout=readout)
    result = train_gpo(table, ds, fit, val, table.qindex(qids), spec, cfg)
    bank = None
    if result.prior is not None:
        rows = {
            question_key(q.text, q.options): (int(table.q_start[i]), int(table.q_len[i]))
            for i, q in enumerate(table.questions)
            if q.qid in set(qids)
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
        "history": result.history,
    }
    out = save_checkpoint(Checkpoint(result.model, meta, bank, metrics), settings.model_store, name)
    typer.echo(
        f"saved {out} (best validation alignment {result.best_val:.4f} at step {result.best_step}, "
        f"{result.wall_s:.0f} s)"
    )


@app.command("eval")
def eval_cmd(
    data: Annotated[Path | None, typer.Option(help="dataset JSONL (default: shipped OpinionQA)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write one record per evaluation")] = None,
    report: Annotated[Path | None, typer.Option(help="write a results page (e.g. RESULTS.md) with plots")] = None,
    splits: Annotated[str, typer.Option(help="comma-separated train-group fractions")] = "0.4,0.6,0.8",
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0,1,2",
    n_context: int = 20,
    curve: Annotated[bool, typer.Option(help="context-size curve (1..100 context questions) on the 60% split")] = True,
    new_questions: Annotated[bool, typer.Option(help="also run the new-questions protocol (60% split)")] = True,
    lm: Annotated[bool, typer.Option(help="score the LLM baselines (on a fixed question sample)")] = True,
    lm_questions: int = 30,
    max_steps: int = 1200,
    time_budget_s: float = 600.0,
    use_prior: bool = True,
    use_embedding: bool = True,
    prior_rank: int = 8,
    readout: Annotated[str, typer.Option(help="prior readout: none | mean | ridge")] = "ridge",
    threads: int | None = None,
) -> None:
    """Meta-train per split and seed, and score GPO beside the baselines on the held-out groups."""
    _setup(threads)
    import torch

    from service.config import get_settings
    from service.gpo.features import FeatureSpec
    from service.training.evaluate import EvalConfig, run_group_protocol, run_new_question_protocol
    from service.training.fit import TrainConfig
    from service.training.lm_baselines import LM_METHODS, load_lm_for_baselines
    from service.training.report import markdown_table

    t0 = time.perf_counter()
    ds, _, data_hash = _load_data(data)
    table, embedder = _embed(ds)
    spec = FeatureSpec(
        emb_dim=table.emb.shape[1], use_embedding=use_embedding, use_prior=use_prior, prior_rank=prior_rank
    )
    cfg = EvalConfig(
        splits=[float(s) for s in splits.split(",")],
        seeds=[int(s) for s in seeds.split(",")],
        n_context=n_context,
        curve_split=0.6 if curve else None,
        lm_methods=LM_METHODS if lm else (),
        lm_questions=lm_questions,
    )
    tcfg = TrainConfig(max_steps=max_steps, time_budget_s=time_budget_s, prior_readout=readout, progress=False)
    base_lm = load_lm_for_baselines(get_settings()) if lm else None
    examples: list[dict] = []
    records = run_group_protocol(ds, table, spec, tcfg, cfg, lm=base_lm, examples=examples)
    if new_questions:
        records += run_new_question_protocol(ds, table, spec, tcfg, cfg, lm=base_lm)
    meta = {
        "command": "gpo eval " + " ".join(__import__("sys").argv[2:]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "embedder": embedder.key_prefix,
        "data_sha256": data_hash,
        "threads": torch.get_num_threads(),
        "machine": f"{__import__('os').cpu_count()}-core CPU",
        "wall_s": time.perf_counter() - t0,
    }
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(records, indent=1))
        _meta_path(json_out).write_text(json.dumps({"meta": meta, "examples": examples}, indent=1))
    for subset in ("all", "contentious"):
        typer.echo(f"\n## {subset} questions\n" + markdown_table(records, subset))
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


@app.command("eval-individuals")
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
    append: Annotated[
        bool, typer.Option(help="merge into the records already in --json (same method, seed and k: replaced)")
    ] = False,
    threads: int | None = None,
) -> None:
    """Individuals (a person is a group of one): GPO on ratings and on comparisons beside the baselines, on
    held-out people of a per-person ratings dataset."""
    _setup(threads)
    import sys

    from service.config import get_settings
    from service.embedder.embed import build_embedder
    from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION, format_response_item
    from service.gpo.features import FeatureSpec
    from service.training.individuals.evaluate import IndividualEvalConfig, evaluate_individuals
    from service.training.individuals.train import IndividualTrainConfig
    from service.training.individuals_report import write_individuals_report
    from service.training.nytbooks import load_nytbooks
    from service.training.ratings import read_ratings_jsonl

    t0 = time.perf_counter()
    ds = read_ratings_jsonl(data) if data else load_nytbooks()
    embedder = build_embedder(get_settings(), template_version=RESPONSE_TEMPLATE_VERSION)
    emb = embedder.embed([format_response_item(ds.prompt, it.text) for it in ds.items], progress=True)
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=prior_rank)
    cfg = IndividualEvalConfig(
        train_frac=train_frac,
        seeds=tuple(int(s) for s in seeds.split(",")),
        n_context=tuple(int(k) for k in n_context.split(",")),
        main_context=main_context,
        comparison=comparison,
    )
    tcfg = IndividualTrainConfig(
        max_steps=max_steps, time_budget_s=time_budget_s, loadings=loadings, patience=8, progress=False
    )
    records, meta = evaluate_individuals(ds, emb, spec, cfg, tcfg)
    command = "gpo " + " ".join(sys.argv[1:])
    if append and json_out and json_out.exists():
        old = json.loads(json_out.read_text())
        new_keys = {(r["method"], r["seed"], r["n_context"]) for r in records}
        records = [r for r in old["records"] if (r["method"], r["seed"], r["n_context"]) not in new_keys] + records
        for part in ("chosen", "training"):
            meta[part] = {**old["meta"].get(part, {}), **meta[part]}
        command = f"{old['meta']['command']}; then {command}"
        meta["wall_s_before"] = old["meta"]["wall_s"] + old["meta"].get("wall_s_before", 0.0)
    meta.update(
        {
            "command": command,
            "wall_s": time.perf_counter() - t0 + meta.get("wall_s_before", 0.0),
            "main_context": main_context,
            "train_frac": train_frac,
            "embedder": embedder.key_prefix,
            "features": spec.to_dict(),
            "train_config": config_dict_of(tcfg),
        }
    )
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
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"records": records, "meta": meta}, indent=1, default=float))
        typer.echo(f"wrote {json_out}")


@app.command("train-individuals")
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
) -> None:
    """Meta-train a rating (or comparison) GPO on every person of a ratings dataset (15% of them for validation)
    and save a servable checkpoint (model, feature spec, item prior bank, content basis)."""
    if kind not in ("rating", "comparison"):
        raise typer.BadParameter(f"kind is rating or comparison, not {kind!r}")
    if head not in ("score", "pair"):
        raise typer.BadParameter(f"head is score or pair, not {head!r}")
    _setup(threads)
    from service.config import get_settings
    from service.embedder.embed import build_embedder
    from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION, format_response_item
    from service.gpo.checkpoint import save_checkpoint
    from service.gpo.features import FeatureSpec
    from service.training.individuals.export import rating_checkpoint
    from service.training.individuals.splits import split_people
    from service.training.individuals.train import IndividualTrainConfig, train_individual_gpo
    from service.training.nytbooks import load_nytbooks
    from service.training.ratings import read_ratings_jsonl

    settings = get_settings()
    ds = read_ratings_jsonl(data) if data else load_nytbooks()
    embedder = build_embedder(settings, template_version=RESPONSE_TEMPLATE_VERSION)
    emb = embedder.embed([format_response_item(ds.prompt, it.text) for it in ds.items], progress=True)
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=prior_rank)
    split = split_people(ds.people, 1.0, seed)
    cfg = IndividualTrainConfig(
        max_steps=max_steps,
        time_budget_s=time_budget_s,
        seed=seed,
        patience=8,
        progress=False,
        reward_lambda=reward_lambda,
        pair_readout=pair_readout,
    )
    train_kind = "comparison_bt" if kind == "comparison" and head == "score" else kind
    result = train_individual_gpo(ds, emb, split, spec, cfg, train_kind, {"ridge_init": ridge_init})
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


def config_dict_of(cfg) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def _meta_path(json_path: Path) -> Path:
    return json_path.with_name(json_path.stem + ".meta.json")


@app.command("report")
def report_cmd(
    json_in: Annotated[Path, typer.Argument(help="records written by `gpo eval --json`")],
    out: Annotated[Path, typer.Option(help="results page to write")] = Path("RESULTS.md"),
) -> None:
    """Rebuild the results page and its plots from saved evaluation records (no training)."""
    from service.training.report import write_report

    records = json.loads(json_in.read_text())
    side = _meta_path(json_in)
    extra = json.loads(side.read_text()) if side.exists() else {"meta": {}, "examples": []}
    typer.echo(f"wrote {write_report(records, extra['examples'], extra['meta'], out)}")


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (GPO_DATABASE_URL) to the latest migration."""
    _setup(None)
    from service.config import get_settings
    from service.db.migrate import current_revision, upgrade_database

    url = get_settings().database_url
    upgrade_database(url)
    typer.echo(f"database at revision {current_revision(url)}")


@app.command()
def worker(
    host: Annotated[str | None, typer.Option(help="bind address (default: settings.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: settings.worker_port)")] = None,
) -> None:
    """Run the embedding worker: the base LLM behind /v1/embeddings and /v1/completions (OpenAI style)."""
    _setup(None)
    import uvicorn

    from service.config import get_settings
    from service.embedder.worker import WorkerEngine, create_worker_app

    settings = get_settings()
    app_ = create_worker_app(WorkerEngine.from_settings(settings))
    uvicorn.run(
        app_,
        host=host or settings.host,
        port=port or settings.worker_port,
        log_config=None,
        access_log=settings.access_log,
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default: settings.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: settings.port)")] = None,
) -> None:
    """Run the HTTP API (groups, /predict, /generate, /readyz, /metrics); everything else from GPO_* variables."""
    _setup(None)
    import uvicorn

    from service.app import create_app
    from service.config import get_settings

    settings = get_settings()
    # lifespan="on": a failed start-up (e.g. a checkpoint that does not match the embedder) exits non-zero.
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        lifespan="on",
        access_log=settings.access_log,
    )


def _key_sessions():
    """A migrated database's session factory, and its engine (no torch: key commands start fast)."""
    from service.config import get_settings
    from service.db.migrate import upgrade_database
    from service.db.session import make_engine, make_sessionmaker

    url = get_settings().database_url
    upgrade_database(url)
    engine = make_engine(url)
    return make_sessionmaker(engine), engine


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Argument(help="tenant the key acts for (letters, digits, _ . : -)")],
    name: Annotated[str, typer.Option(help="a label, e.g. who holds the key")] = "",
) -> None:
    """Create a key and print it (only its sha256 digest is stored: it cannot be shown again)."""
    from service.auth import InvalidTenant, create_key

    sessions, engine = _key_sessions()
    try:
        info, secret = create_key(sessions, tenant, name)
    except (InvalidTenant, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    finally:
        engine.dispose()
    typer.echo(f"created key {info.id} of tenant {info.tenant!r}; send it as 'Authorization: Bearer <key>':", err=True)
    typer.echo(secret)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
) -> None:
    """Keys with their id, tenant, name, creation and revocation times (never the secrets)."""
    from service.db import repository as repo
    from service.db.session import session_scope

    sessions, engine = _key_sessions()
    try:
        with session_scope(sessions) as session:
            keys = repo.list_api_keys(session, tenant)
    finally:
        engine.dispose()
    typer.echo("id\ttenant\tname\tcreated_at\trevoked_at")
    for k in keys:
        revoked = k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-"
        typer.echo(f"{k.id}\t{k.tenant}\t{k.name or '-'}\t{k.created_at.isoformat(timespec='seconds')}\t{revoked}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="id of the key, as `gpo keys list` shows it")]) -> None:
    """Revoke a key: it stops working on every replica within GPO_AUTH_CACHE_S seconds."""
    from service.db import repository as repo
    from service.db.session import session_scope

    sessions, engine = _key_sessions()
    try:
        with session_scope(sessions) as session:
            info = repo.revoke_api_key(session, key_id)
    finally:
        engine.dispose()
    if info is None:
        typer.echo(f"no key with id {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"key {info.id} of tenant {info.tenant!r} revoked at {info.revoked_at.isoformat(timespec='seconds')}")


if __name__ == "__main__":
    app()
