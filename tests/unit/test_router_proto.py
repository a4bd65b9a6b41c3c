"""The gRPC contract: generated from scoring.proto on first use, and in step with REST."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.features.definition import FEATURE_NAMES
from services.router import proto
from services.router.schemas import Decision


def test_generation_into_an_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(proto.CACHE_ENV, str(tmp_path))
    folder = proto.generate()
    assert folder.is_relative_to(tmp_path / proto.cache_key())
    assert {p.name for p in folder.iterdir()} >= {"scoring_pb2.py", "scoring_pb2_grpc.py"}
    assert proto.generate() == folder  # cached: no second protoc run
    text = (folder / "scoring_pb2_grpc.py").read_text()
    assert "from services.router.proto import scoring_pb2" in text


def test_the_cache_key_follows_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "scoring.proto"
    copy.write_text(proto.PROTO.read_text() + "\n// changed\n")
    before = proto.cache_key()
    monkeypatch.setattr(proto, "PROTO", copy)
    assert proto.cache_key() != before


def test_decision_message_has_every_field_of_the_rest_decision() -> None:
    pb2 = proto.load().pb2
    fields = [f.name for f in pb2.Decision.DESCRIPTOR.fields]
    assert fields == list(Decision.model_fields)
    scores = pb2.Decision.DESCRIPTOR.fields_by_name["model_scores"].message_type
    assert scores.fields_by_name["value"].type == scores.fields_by_name["value"].TYPE_DOUBLE
    service = pb2.DESCRIPTOR.services_by_name["Scoring"]
    assert service.full_name == "anomaly.v1.Scoring"
    assert [m.name for m in service.methods] == ["Score"]


def test_feature_vector_length_is_documented_as_the_feature_count() -> None:
    assert f"exactly {len(FEATURE_NAMES)}" in proto.PROTO.read_text()
