"""The benchmark behind `make bench` (README, Performance): the service against its baselines."""

import os


def event_loop() -> str:
    """The service's event loop (``EVENT_LOOP``, app/settings.py). Each baseline runs on the loop
    the service runs on, so the ratios compare pipelines, not event loops."""
    from app.settings import Settings

    chosen = {k: v for k, v in os.environ.items() if k == "EVENT_LOOP"}
    return Settings.from_env(chosen, check_secrets=False).event_loop
