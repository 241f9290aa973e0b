"""`royalty`: the command line. Thin: a command parses arguments and calls package APIs.

One module per command group, `royalty/cli/<group>.py` (`royalty datanet ...` is
`royalty/cli/datanet.py`); `up` and `report` are single commands with modules of their own.
This module builds the app from them; `options.py` holds what every command shares. Work
that is more than a call lives below the CLI: operator actions in `royalty.admin`, the month
close in `royalty.month_close`, worker processes in `royalty.workers`.
"""

from __future__ import annotations

import typer

from royalty.cli.adapters import adapters_app
from royalty.cli.credits import credits_app
from royalty.cli.datanet import datanet_app
from royalty.cli.db import db_app
from royalty.cli.deadletters import deadletters_app
from royalty.cli.factory import factory_app
from royalty.cli.influence import influence_app
from royalty.cli.keys import keys_app
from royalty.cli.ledger import ledger_app
from royalty.cli.models import models_app
from royalty.cli.payouts import payouts_app
from royalty.cli.prices import prices_app
from royalty.cli.report import report
from royalty.cli.training import training_app
from royalty.cli.up import up

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Royalty: pay the people behind a model."
)
app.command("report")(report)
app.command()(up)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(datanet_app, name="datanet")
app.add_typer(factory_app, name="factory")
app.add_typer(adapters_app, name="adapters")
app.add_typer(credits_app, name="credits")
app.add_typer(prices_app, name="prices")
app.add_typer(payouts_app, name="payouts")
app.add_typer(ledger_app, name="ledger")
app.add_typer(influence_app, name="influence")
app.add_typer(training_app, name="training")
app.add_typer(deadletters_app, name="deadletters")


def main() -> None:
    app()
