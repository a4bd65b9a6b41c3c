"""The local broker's JIT choice: quick (C1 only) by default, C2 on request, nothing else."""

from __future__ import annotations

import local_kafka
import pytest
from local_kafka import DEFAULT_JVM_OPTS, QUICK_JIT_OPTS, LocalKafka


def test_the_broker_stops_at_c1_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_KAFKA_JIT", raising=False)
    assert LocalKafka(port=1).jvm_opts == DEFAULT_JVM_OPTS + QUICK_JIT_OPTS
    monkeypatch.setenv("LOCAL_KAFKA_JIT", "full")
    opts = LocalKafka(port=1).jvm_opts
    assert opts == DEFAULT_JVM_OPTS
    assert not any(o.startswith("-XX:TieredStopAtLevel") for o in opts)
    # Options given by the caller win over the environment.
    assert LocalKafka(port=1, jvm_opts=("-Xmx64m",)).jvm_opts == ("-Xmx64m",)


def test_an_unknown_jit_choice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_KAFKA_JIT", "fast")
    with pytest.raises(ValueError, match="LOCAL_KAFKA_JIT must be 'quick' or 'full'"):
        local_kafka.default_jvm_opts()
