"""``python -m predictor.stream``: one Faust predictor worker, settings from ``ALB_PREDICTOR_*``."""

from __future__ import annotations

import sys

from predictor.stream.settings import SettingsError, load_settings


def main() -> int:
    """Parse the settings (exit 2 naming the variable), then run the worker."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"alb predictor: {exc}", file=sys.stderr)
        return 2
    from predictor.stream.app import run_worker  # noqa: PLC0415 (faust is slow to import)

    run_worker(settings, loglevel="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
