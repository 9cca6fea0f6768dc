"""`sslops lineage` without a store: how a model reference is read (end to end: tests/test_stage_finetune_evaluate.py
and tests/test_pipeline_dvc.py)."""

from __future__ import annotations

from sslops.commands.lineage import parse_ref


def test_model_refs():
    assert parse_ref("models:/enc@champion", "d") == ("enc", "champion")
    assert parse_ref("models:/enc/3", "d") == ("enc", "3")
    assert parse_ref("candidate", "d") == ("d", "candidate") and parse_ref("@champion", "d") == ("d", "champion")
