"""Prefect flows: wiring only, one per experiment.

Prefect's environment defaults are set here, before Prefect is imported, so that every
way in (the ``collide`` CLI, ``python -m flows.*``, the tests) gets the same ones; a
value the user exported wins:

- telemetry off: these machines are offline, and a failed analytics call only adds
  noise to the log;
- ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``: Prefect gives its temporary
  server 20 s to start; a cold Prefect home (new database, migrations) on a loaded
  2-core machine needs longer, so allow minutes (``collide run``'s own temporary server,
  :mod:`flows.temporary_server`, reads it too);
- ``PREFECT_LOGGING_EXTRA_LOGGERS``: what the library logs (``collide.datasets.mnist``
  downloading MNIST, say) goes to the flow run's log as well.
"""

import os

#: Seconds Prefect waits for its temporary server unless the user set the variable.
EPHEMERAL_STARTUP_TIMEOUT_S = 600
STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault(STARTUP_TIMEOUT_ENV, str(EPHEMERAL_STARTUP_TIMEOUT_S))
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "collide")
# Dask's scheduler and nannies log every worker start and stop; the flow log says what matters.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
