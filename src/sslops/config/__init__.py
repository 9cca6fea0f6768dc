"""The config layer: the project's paths, params.yaml, and one typed, validated config per section.

Stages ask `project.config("<stage>")` for their typed config; the raw dict never leaves this package except as
`record()` output for MLflow and lineage.
"""

from sslops.config.project import ROOT_ENV, Project, find_root, flatten, params_hash

__all__ = ["ROOT_ENV", "Project", "find_root", "flatten", "params_hash"]
