"""Data commands: `gpo import opinionqa|globalopinionqa|nytbooks|csv|jsonl` (to JSONL), `gpo check` and `gpo embed`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service.cli.runtime import (
    embed_group_dataset,
    load_group_dataset,
    print_check,
    set_up_logging_and_threads,
)

if TYPE_CHECKING:
    from service.training.datasets import PreferenceDataset

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


OutArg = Annotated[Path | None, typer.Argument(help="output .jsonl or .jsonl.gz (not with --dry-run)")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="read and check only: print the counts, write nothing")]


def import_checked(load: Callable[[], PreferenceDataset], out: Path | None, dry_run: bool) -> None:
    """Read a user's table (`load()`), write it to `out` unless a dry run, and print what training can use of it.

    A dry run exits with status 1 when the data cannot train; a write reports that as a warning."""
    from service.training.checks import check_dataset
    from service.training.jsonl import write_jsonl

    if (out is None) != dry_run:
        raise typer.BadParameter("give OUT, or --dry-run without OUT")
    try:
        ds = load()
        if out is not None:
            write_jsonl(ds, out)
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo("dry run: nothing written" if out is None else f"wrote {out}")
    print_check(check_dataset(ds), fatal=dry_run)


@import_app.command("csv")
def import_csv_cmd(
    file: Annotated[Path, typer.Argument(help="long CSV: one row per (group, question, option)")],
    group: Annotated[str, typer.Option(help="column of the group")],
    question_id: Annotated[str, typer.Option(help="column of the question id")],
    question: Annotated[str, typer.Option(help="column of the question text")],
    option: Annotated[str, typer.Option(help="column of the answer option")],
    out: OutArg = None,
    count: Annotated[str | None, typer.Option(help="column of how many chose the option")] = None,
    share: Annotated[str | None, typer.Option(help="column of the share that chose it (a group's sum to 1)")] = None,
    attribute: Annotated[str | None, typer.Option(help="column of the group's attribute")] = None,
    ordinal: Annotated[str | None, typer.Option(help="column of the option's place on an ordinal scale")] = None,
    tags: Annotated[str | None, typer.Option(help="column of the question's tags, separated by ';'")] = None,
    delimiter: Annotated[str, typer.Option(help="field separator")] = ",",
    dry_run: DryRun = False,
) -> None:
    """Convert a long table (a row per group, question and option, with a count or share) to the JSONL format."""
    from service.training.tabular import CsvColumns, read_csv_table

    try:
        columns = CsvColumns(group, question_id, question, option, count, share, attribute, ordinal, tags)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    import_checked(lambda: read_csv_table(file, columns, delimiter), out, dry_run)


@import_app.command("jsonl")
def import_jsonl_cmd(
    file: Annotated[Path, typer.Argument(help="JSONL(.gz): one object per (group, question), with your keys")],
    out: OutArg = None,
    map_: Annotated[
        list[str] | None, typer.Option("--map", help="FIELD=KEY: read our FIELD from your KEY (repeatable)")
    ] = None,
    ignore_extra: Annotated[bool, typer.Option(help="drop keys that are no field, instead of refusing them")] = False,
    dry_run: DryRun = False,
) -> None:
    """Convert a JSONL of group answers whose keys differ from ours (service/data/FORMAT.md) to the JSONL format."""
    from service.training.tabular import parse_field_map, read_mapped_jsonl

    try:
        mapping = parse_field_map(map_ or [])
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    import_checked(lambda: read_mapped_jsonl(file, mapping, ignore_extra), out, dry_run)


def check(
    data: Annotated[Path | None, typer.Argument(help="dataset JSONL (default: shipped OpinionQA)")] = None,
) -> None:
    """Read a group dataset and print what training and evaluation can use of it; status 1 when it cannot train."""
    from service.training.checks import check_dataset

    try:
        ds, _, _ = load_group_dataset(data)
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    print_check(check_dataset(ds), fatal=True)


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
