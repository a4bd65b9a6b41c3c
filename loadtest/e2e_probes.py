"""What the end-to-end benchmark watches while the stack runs: decisions, offsets, processes.

Each probe records and nothing more (`e2e_metrics` turns the records into figures):

* `ScoresReader` reads `scores` and `events.labels` from their ends, like any downstream
  consumer, into a `DecisionLedger`;
* `OffsetSampler` asks the broker, once a second, for the end offsets of the pipeline's
  topics and the committed offsets of the ingest and router groups: throughput and
  consumer lag measured from outside the services, from what is durable;
* `ProcessTable` reads CPU time and peak RSS of each process (and its children) from
  /proc, and the whole machine's busy CPU time from /proc/stat, so that the report can say
  how much of the cores went to processes that are not part of the benchmark.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from pipeline_monitor import TopicTail, decisions_and_labels

from loadtest.e2e_metrics import DecisionLedger, OffsetSample
from loadtest.procstat import (
    ProcessTree,
    cpu_seconds,
    machine_busy_seconds,
    peak_rss_mb,
    process_tree,
)
from services.common.config import PlatformConfig
from services.common.kafka.clients import make_admin


class ScoresReader(TopicTail):
    """Decisions and labels into a ledger, from the current end of both topics."""

    def __init__(self, config: PlatformConfig, ledger: DecisionLedger) -> None:
        topics = config.kafka.topics
        super().__init__(config, (topics.scores.name, topics.labels.name), "bench-scores")
        self.ledger = ledger

    def _handle(self, msgs: list[Message]) -> None:
        read_ms = round(time.time() * 1000)
        decisions, labels, unreadable = decisions_and_labels(msgs, self._topics[0])
        with self._lock:
            if decisions:
                self.ledger.add_decisions(decisions, read_ms)
            self.ledger.unreadable += len(unreadable)
            if labels:
                self.ledger.add_labels(labels)

    def decided(self) -> int:
        """Distinct events decided so far."""
        with self._lock:
            return len(self.ledger.decided)


class OffsetSampler:
    """End offsets of topics and committed offsets of groups, sampled on a thread."""

    def __init__(
        self,
        config: PlatformConfig,
        topics: tuple[str, ...],
        groups: Mapping[str, str],
        interval_s: float = 1.0,
    ) -> None:
        """`groups`: consumer group -> the topic it consumes."""
        self._admin: AdminClient = make_admin(config.kafka)
        meta = self._admin.list_topics(timeout=10).topics
        self._partitions = {t: sorted(meta[t].partitions) for t in {*topics, *groups.values()}}
        self._topics = topics
        self._groups = dict(groups)
        self._interval = interval_s
        self._started = time.monotonic()
        self.samples: list[OffsetSample] = []
        self.missed: list[str] = []
        """Samples the broker did not answer in time (reported with the results)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-offsets", daemon=True)

    def sample(self) -> OffsetSample:
        """One sample now (also what the thread records)."""
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {
            TopicPartition(t, p): latest for t, parts in self._partitions.items() for p in parts
        }
        ends = {tp: f.result().offset for tp, f in self._admin.list_offsets(request).items()}
        end = {t: 0 for t in self._partitions}
        for tp, offset in ends.items():
            end[tp.topic] += max(offset, 0)
        committed = {}
        for group, topic in self._groups.items():
            parts = [TopicPartition(topic, p) for p in self._partitions[topic]]
            futures = self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group, parts)]
            )
            result = futures[group].result()
            # No commit yet on a partition (offset < 0) means nothing of it is durable.
            committed[group] = sum(max(tp.offset, 0) for tp in result.topic_partitions)
        return OffsetSample(time.monotonic() - self._started, end, committed)

    def start(self) -> Self:
        """Record from now on; `t` of the samples counts from this call."""
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (the samples stay)."""
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except KafkaException as exc:  # a slow broker answer: a gap, not a dead sampler
                self.missed.append(f"{time.monotonic() - self._started:.1f}s: {exc}")
            self._stop.wait(self._interval)


@dataclass
class ProcessUsage:
    """CPU seconds over the measured window and peak RSS of one process."""

    cpu_s: float
    peak_rss_mb: float


class ProcessTable:
    """CPU at the start and end of the window, peak RSS sampled until the end."""

    def __init__(self, pids: Mapping[str, int], memory_interval_s: float = 1.0) -> None:
        self._pids = dict(pids)
        self._memory_interval_s = memory_interval_s
        self._next_memory_sample = 0.0
        tree = process_tree()
        self._cpu0 = {name: self._cpu(pid, tree) for name, pid in self._pids.items()}
        self._peak = {name: 0.0 for name in self._pids}
        self.machine0 = machine_busy_seconds()

    def _cpu(self, pid: int, tree: ProcessTree) -> float:
        return cpu_seconds(pid, set(self._pids.values()) - {pid}, tree)

    def add(self, name: str, pid: int) -> None:
        """A process that starts inside the window (its CPU counts from zero)."""
        self._pids[name] = pid
        self._cpu0[name] = 0.0
        self._peak[name] = 0.0

    def sample_memory(self, *, force: bool = False) -> None:
        """Peak RSS only grows (VmHWM is the kernel's high-water mark), so sampling only has
        to catch child processes before they exit: at most once per `memory_interval_s`
        however often it is called, and one walk of /proc serves every process (this
        process shares the cores with what it measures)."""
        now = time.monotonic()
        if not force and now < self._next_memory_sample:
            return
        self._next_memory_sample = now + self._memory_interval_s
        tree = process_tree()
        for name, pid in self._pids.items():
            others = set(self._pids.values()) - {pid}
            self._peak[name] = max(self._peak[name], peak_rss_mb(pid, others, tree))

    def finish(self, exited_cpu: Mapping[str, float]) -> tuple[dict[str, ProcessUsage], float]:
        """Usage per process (`exited_cpu` for those already reaped) and the machine's busy
        CPU seconds over the window."""
        self.sample_memory(force=True)
        tree = process_tree()
        out = {}
        for name, pid in self._pids.items():
            end = exited_cpu[name] if name in exited_cpu else self._cpu(pid, tree)
            out[name] = ProcessUsage(round(end - self._cpu0[name], 1), round(self._peak[name], 1))
        return out, machine_busy_seconds() - self.machine0
