"""The ``alb`` command line.

Each sub-command is a thin shell: it parses arguments and hands over to the
package that owns the behaviour. Commands that later issues deliver are not
listed until they exist, so ``alb --help`` never advertises a stub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="alb",
    help="Async-Load Bridge: a production control plane for Ollama.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def sim(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Fleet file (YAML) describing the simulated daemons and models.",
        ),
    ],
    host: Annotated[str, typer.Option(help="Address every daemon listens on.")] = "127.0.0.1",
) -> None:
    """Run a simulated Ollama fleet: one HTTP daemon per entry in the fleet file."""
    from ollamasim.cli import serve_fleet

    serve_fleet(config, host=host)


@app.callback()
def _main() -> None:
    """Async-Load Bridge: a production control plane for Ollama."""


if __name__ == "__main__":  # pragma: no cover
    app()
