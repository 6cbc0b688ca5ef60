"""``python -m alb``: the ``alb`` CLI."""

from alb.cli import app

app()
