"""The process environment sslops sets for itself and for the tools it starts (CLI and flow driver alike)."""

# No telemetry from the tools we drive (the Makefile and .ci/run export the same).
TELEMETRY_OFF = {
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
