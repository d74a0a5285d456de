"""The benchmark behind `make bench` (README, Performance): the service against its baselines."""

import os

from app.settings import Settings

# The settings a baseline shares with the service, so the ratios compare pipelines, not
# event loops or producer batching.
SHARED = ("EVENT_LOOP", "PRODUCER_LINGER_MS")


def service_settings() -> Settings:
    """The service's settings of :data:`SHARED` from the environment (the rest at defaults)."""
    chosen = {k: v for k, v in os.environ.items() if k in SHARED}
    return Settings.from_env(chosen, check_secrets=False)
