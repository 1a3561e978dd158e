"""Service commands: `gpo migrate`, `gpo worker`, `gpo serve` and `gpo keys create|list|revoke`."""

from __future__ import annotations

from typing import Annotated

import typer

from service.cli.runtime import set_up_logging_and_threads

keys_app = typer.Typer(
    help="API keys of tenants (the database of GPO_DATABASE_URL; it is migrated first).", no_args_is_help=True
)


def migrate() -> None:
    """Create or upgrade the database schema (GPO_DATABASE_URL) to the latest migration."""
    set_up_logging_and_threads(None)
    from service.config import get_settings
    from service.db.migrate import current_revision, upgrade_database

    url = get_settings().database_url
    upgrade_database(url)
    typer.echo(f"database at revision {current_revision(url)}")


def worker(
    host: Annotated[str | None, typer.Option(help="bind address (default: settings.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: settings.worker_port)")] = None,
) -> None:
    """Run the embedding worker: the base LLM behind /v1/embeddings and /v1/completions (OpenAI style)."""
    set_up_logging_and_threads(None)
    import uvicorn

    from service.config import get_settings
    from service.embedder.engine import WorkerEngine
    from service.embedder.worker import create_worker_app

    settings = get_settings()
    app_ = create_worker_app(
        WorkerEngine.from_settings(settings),
        request_timeout_s=settings.request_timeout_s,
        retry_after_s=settings.retry_after_s,
    )
    uvicorn.run(
        app_,
        host=host or settings.host,
        port=port or settings.worker_port,
        log_config=None,
        access_log=settings.access_log,
        timeout_keep_alive=settings.keep_alive_s,
    )


def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default: settings.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: settings.port)")] = None,
) -> None:
    """Run the HTTP API (groups, /predict, /generate, /readyz, /metrics); everything else from GPO_* variables."""
    set_up_logging_and_threads(None)
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
        timeout_keep_alive=settings.keep_alive_s,
    )


def open_key_sessions():
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

    sessions, engine = open_key_sessions()
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

    sessions, engine = open_key_sessions()
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

    sessions, engine = open_key_sessions()
    try:
        with session_scope(sessions) as session:
            info = repo.revoke_api_key(session, key_id)
    finally:
        engine.dispose()
    if info is None:
        typer.echo(f"no key with id {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"key {info.id} of tenant {info.tenant!r} revoked at {info.revoked_at.isoformat(timespec='seconds')}")
