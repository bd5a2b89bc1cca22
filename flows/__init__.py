"""Prefect flows: wiring only, one per experiment.

Telemetry is switched off before Prefect is imported: these machines are offline, and
a failed analytics call only adds noise to the log.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Dask's scheduler and nannies log every worker start and stop; the flow log says what matters.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
