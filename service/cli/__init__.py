"""`gpo` command line: import datasets, embed, meta-train and evaluate (offline work), serve, manage API keys.

Each command family lives in its own module; this one lists every command, in the order `gpo --help` shows them.
"""

from __future__ import annotations

import typer

from service.cli import data, groups, individuals, serve

app = typer.Typer(help="gpo-serve: Group Preference Optimization, offline tools.", no_args_is_help=True)
app.add_typer(data.import_app, name="import")
app.add_typer(serve.keys_app, name="keys")

app.command("check")(data.check)
app.command("embed")(data.embed)
app.command("train")(groups.train)
app.command("eval")(groups.eval_cmd)
app.command("eval-individuals")(individuals.eval_individuals_cmd)
app.command("train-individuals")(individuals.train_individuals_cmd)
app.command("report")(groups.report_cmd)
app.command("migrate")(serve.migrate)
app.command("worker")(serve.worker)
app.command("serve")(serve.serve)
