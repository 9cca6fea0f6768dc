"""Adapters: one thin module per MLOps tool (MLflow, Great Expectations, DVC's files, git provenance).

Nothing else in sslops imports mlflow or great_expectations; stages and commands reach them only here, so a
unit test can stub an adapter while integration tests use the real tool.
"""
