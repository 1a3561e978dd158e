"""`python -m service.cli`: the `gpo` command line."""

from service.cli import app

app()
