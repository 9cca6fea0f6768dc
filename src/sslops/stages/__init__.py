"""One module per dvc.yaml stage (docs/architecture.md): each exposes `run(project) -> summary dict`.

Stages glue the ML core to the thin MLOps modules; `python -m sslops <stage>` runs them for dvc.yaml.
"""
