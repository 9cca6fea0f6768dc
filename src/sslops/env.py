"""The process environment sslops sets for itself and for the tools it starts (CLI and flow driver alike)."""

import time

STARTED = time.monotonic()  # when this process first imported sslops: a stage's wall time counts from here

# No telemetry from the tools we drive (the Makefile and .ci/run export the same).
TELEMETRY_OFF = {
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}

# `sslops repro` hands each stage process its estimate (JSON {stage address: seconds}; the stage's MLflow run records
# it beside the actual) and a file to append its own wall time to (one JSON line per stage), for the closing table.
ESTIMATES_ENV = "SSLOPS_ESTIMATES"
TIMINGS_ENV = "SSLOPS_TIMINGS"
