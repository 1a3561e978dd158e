"""Data commands: `gpo import opinionqa|globalopinionqa|nytbooks` (source folders to JSONL) and `gpo embed`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service.cli.runtime import embed_group_dataset, load_group_dataset, set_up_logging_and_threads

import_app = typer.Typer(help="Import datasets into the generic JSONL format.", no_args_is_help=True)


@import_app.command("opinionqa")
def import_opinionqa_cmd(
    root: Annotated[Path, typer.Argument(help="OpinionQA human_resp folder")],
    out: Annotated[Path, typer.Argument(help="output .jsonl or .jsonl.gz")],
) -> None:
    """Convert the OpinionQA folder layout to the generic JSONL format."""
    from service.training.opinionqa import import_opinionqa_to

    ds = import_opinionqa_to(root, out)
    typer.echo(f"wrote {out}: {len(ds.groups)} groups, {len(ds.questions)} questions")


@import_app.command("globalopinionqa")
def import_globalopinionqa_cmd(
    root: Annotated[Path, typer.Argument(help="folder holding the two GlobalOpinionQA copies (see its SOURCE.md)")],
    out: Annotated[Path | None, typer.Argument(help="output .jsonl or .jsonl.gz (not with --dry-run)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="import and summarise, write nothing")] = False,
) -> None:
    """Merge the GlobalOpinionQA copies (countries as groups, ragged) into the generic JSONL format."""
    from service.training.globalopinionqa import import_globalopinionqa_with_notes, summary_lines
    from service.training.jsonl import write_jsonl

    if (out is None) != dry_run:
        raise typer.BadParameter("give OUT, or --dry-run without OUT")
    try:
        ds, notes = import_globalopinionqa_with_notes(root)
        if out is not None:
            write_jsonl(ds, out)
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo("dry run: nothing written" if out is None else f"wrote {out}")
    for line in [*notes.lines(), *summary_lines(ds)]:
        typer.echo(line)


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


def embed(data: Annotated[Path | None, typer.Option(help="dataset JSONL (default: shipped OpinionQA)")] = None) -> None:
    """Embed every item of a dataset into the on-disk cache (each batch is saved as it is done: an interrupted run
    keeps its batches, and running it again embeds only the rest)."""
    set_up_logging_and_threads(None)
    ds, _, _ = load_group_dataset(data)
    try:
        table, embedder = embed_group_dataset(ds)
    except KeyboardInterrupt:
        typer.echo("interrupted: the batches done so far are in the cache; `gpo embed` again does the rest", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"{table.n_items} items embedded ({embedder.key_prefix})")
