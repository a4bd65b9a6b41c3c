"""Moving alerts from the outbox to the sinks, with retries, and never losing one.

For each sink, due alerts are read in bounded batches, split by the sink's `batch_key`
and written. Outcomes, recorded in the outbox per (alert, sink):

* accepted -> delivered (latency observed; pruned after `retention_s`);
* `HeldForGrouping` -> stays pending until the window ends, no attempt counted;
* retryable `DeliveryError` (429, 408, 5xx, network) -> attempt counted, next attempt after
  exponential backoff with jitter, never sooner than the receiver's Retry-After; the whole
  sink pauses until then, because a throttled or broken receiver is throttled for every
  alert, not only for this batch;
* permanent `DeliveryError` (other 4xx), or failing for longer than `give_up_after_s`
  -> dead: logged, counted, kept in the outbox with status and message, retried only by
  hand (`anomaly alerts retry-dead`);
* `PartialDelivery` -> the alerts it names get their own outcome as above, the others are
  delivered. The sink pauses only when none got through: one bad record says nothing
  about the receiver, so the others keep flowing while that one waits its backoff.

Any other exception from a sink is a bug; it is logged and treated as retryable, so a bug
delays alerts instead of dropping them.

The kill switch (`flags.alerts_enabled: false`) and entity suppression
(`flags.suppressed_entities`), read on every pass so that a hot reload takes effect at
once, also hold the alerts that were already in the outbox when the flag was set. While
the kill switch is on nothing is sent to any sink (no triggers, no resolves, no Kafka
records); while an entity is suppressed its alerts are skipped and the others go on. Held
alerts stay pending, count no attempt (so they do not age into dead) and go out when the
flag is cleared; PagerDuty then folds each incident's backlog into one trigger, so the
release pages once per incident, not once per alert. Held rather than dropped because a
flag is set to stop pages now (a noisy rollout, a maintenance) and is meant to be cleared
again, and alerts are never lost in silence here: it is what an Alertmanager silence does,
and what is held stays visible (`anomaly_alerts_outbox_suppressed`, `anomaly alerts
outbox`). Alerts decided while a flag is set never reach the outbox (the scoring core
leaves them out).

`dispatch_once` does one pass (tests drive it directly); `start` runs passes on a
background thread, woken at once by `enqueue`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.common.config.model import AlertsConfig, FeatureFlags
from services.router.alerts.alert import Alert
from services.router.alerts.backoff import Backoff
from services.router.alerts.clock import Clock, system_clock
from services.router.alerts.errors import DeliveryError, HeldForGrouping, PartialDelivery
from services.router.alerts.metrics import AlertMetrics
from services.router.alerts.outbox import Outbox, OutboxEntry
from services.router.alerts.sinks.base import AlertSink

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 60.0
BATCHES_PER_SINK_PER_PASS = 20
"""Under a steady stream one sink must not keep the pass (and the other sinks) forever."""
MIN_SLEEP_S = 0.005

FlagsSource = Callable[[], FeatureFlags]
"""The flags in force (the router's `LiveConfig`, hot-reloaded), read once per pass."""


@dataclass
class DispatchReport:
    """What one pass did, summed over sinks (alert counts)."""

    delivered: int = 0
    held: int = 0
    retried: int = 0
    dead: int = 0


class Dispatcher:
    """Delivers the outbox's pending alerts to the sinks; one instance per outbox."""

    def __init__(
        self,
        outbox: Outbox,
        sinks: Sequence[AlertSink],
        cfg: AlertsConfig,
        *,
        metrics: AlertMetrics,
        clock: Clock = system_clock,
        backoff: Backoff | None = None,
        flags: FlagsSource | None = None,
    ) -> None:
        self._outbox = outbox
        self._sinks = list(sinks)
        self._cfg = cfg
        self._metrics = metrics
        self._clock = clock
        self._backoff = backoff or Backoff.from_config(cfg)
        self._paused_until: dict[str, float] = {}
        self._tick_failures: dict[str, int] = {}
        """Timed-work failures in a row per sink, so their pauses grow like deliveries'."""
        self._last_prune = float("-inf")
        no_flags = FeatureFlags()
        self._flags: FlagsSource = flags or (lambda: no_flags)
        self._killed = False
        """The kill switch was on at the last pass."""
        self._suppressed: frozenset[str] = frozenset()
        """Entities suppressed at the last pass: their alerts are not due."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        outbox.add_listener(self._wake.set)

    # ------------------------------------------------------------------ one pass

    def dispatch_once(self) -> DispatchReport:
        """Deliver what is due now to every sink that is not paused (nothing while the kill
        switch is on); then housekeeping."""
        report = DispatchReport()
        self._read_flags()
        for sink in self._sinks if not self._killed else ():
            if self._paused_until.get(sink.name, float("-inf")) > self._clock():
                continue
            self._paused_until.pop(sink.name, None)
            if self._deliver_due(sink, report):
                self._tick(sink)
        now = self._clock()
        if now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            self._outbox.prune(self._cfg.retention_s)
        self._update_gauges()
        return report

    def _read_flags(self) -> None:
        """Take the flags in force; say so when they start or stop holding alerts."""
        flags = self._flags()
        killed = not flags.alerts_enabled
        suppressed = flags.suppressed_entities
        if killed != self._killed:
            pending = sum(s.pending for s in self._outbox.stats(delivered=False).values())
            if killed:
                log.warning(
                    "alert kill switch is on: %d pending alert deliveries are held in the "
                    "outbox until it is turned off",
                    pending,
                    extra={"pending": pending},
                )
            else:
                log.warning("alert kill switch is off: releasing %d held alert deliveries", pending)
        if suppressed != self._suppressed and suppressed:
            held = sum(self._outbox.pending_of_entities(suppressed).values())
            log.warning(
                "alerts of %d suppressed entities are held: %d pending deliveries",
                len(suppressed),
                held,
                extra={"entities": sorted(suppressed)[:20], "pending": held},
            )
        self._killed = killed
        self._suppressed = suppressed

    def _deliver_due(self, sink: AlertSink, report: DispatchReport) -> bool:
        """Write due batches until none is left (or enough for one pass); False if paused."""
        limit = self._cfg.dispatch_batch_size
        for _ in range(BATCHES_PER_SINK_PER_PASS):
            entries = self._outbox.due(sink.name, limit, exclude_entities=self._suppressed)
            groups: dict[str, list[OutboxEntry]] = {}
            for entry in entries:
                groups.setdefault(sink.batch_key(entry.alert), []).append(entry)
            for group in groups.values():
                if not self._write(sink, group, report):
                    return False
            if len(entries) < limit:
                break
        return True

    def _write(self, sink: AlertSink, group: list[OutboxEntry], report: DispatchReport) -> bool:
        """Write one batch and record the outcome; False when the sink got paused."""
        ids = [e.alert_id for e in group]
        try:
            sink.write([e.alert for e in group])
        except HeldForGrouping as held:
            self._outbox.mark_held(sink.name, ids, held.until)
            self._metrics.held.labels(sink.name).inc(len(ids))
            report.held += len(ids)
            return True
        except DeliveryError as exc:
            return self._failed(sink, group, exc, report)
        except PartialDelivery as partial:
            return self._partial(sink, group, partial, report)
        except Exception as exc:
            log.exception("alert sink %s raised unexpectedly; retrying later", sink.name)
            error = DeliveryError(f"sink bug: {exc!r}", status=None, retryable=True)
            return self._failed(sink, group, error, report)
        self._delivered(sink, group, report)
        return True

    def _delivered(self, sink: AlertSink, group: list[OutboxEntry], report: DispatchReport) -> None:
        if not group:
            return
        self._outbox.mark_delivered(sink.name, [e.alert_id for e in group])
        now = self._clock()
        self._metrics.delivered.labels(sink.name).inc(len(group))
        for entry in group:
            self._metrics.delivery_seconds.labels(sink.name).observe(
                max(now - entry.enqueued_at, 0.0)
            )
        report.delivered += len(group)

    def _partial(
        self,
        sink: AlertSink,
        group: list[OutboxEntry],
        partial: PartialDelivery,
        report: DispatchReport,
    ) -> bool:
        """Record each alert's own outcome; False when the sink got paused."""
        by_error: dict[int, tuple[DeliveryError, list[OutboxEntry]]] = {}
        accepted: list[OutboxEntry] = []
        for index, entry in enumerate(group):
            exc = partial.failures.get(index)
            if exc is None:
                accepted.append(entry)
            else:
                by_error.setdefault(id(exc), (exc, []))[1].append(entry)
        self._delivered(sink, accepted, report)
        retry: list[OutboxEntry] = []
        retry_exc: DeliveryError | None = None
        for exc, entries in by_error.values():
            if exc.retryable:
                retry.extend(entries)
                retry_exc = retry_exc or exc
            else:
                self._failed(sink, entries, exc, report)
        if retry_exc is None:
            return True
        return self._failed(sink, retry, retry_exc, report, pause=not accepted)

    def _failed(
        self,
        sink: AlertSink,
        group: list[OutboxEntry],
        exc: DeliveryError,
        report: DispatchReport,
        *,
        pause: bool = True,
    ) -> bool:
        now = self._clock()
        expired = [
            e
            for e in group
            if e.first_failure_at is not None
            and now - e.first_failure_at >= self._cfg.give_up_after_s
        ]
        dead = group if not exc.retryable else expired
        if dead:
            why = str(exc) if not exc.retryable else f"gave up after retries: {exc}"
            dead_ids = [e.alert_id for e in dead]
            self._outbox.mark_dead(sink.name, dead_ids, status=exc.status, error=why)
            self._metrics.failed.labels(sink.name, "dead").inc(len(dead))
            report.dead += len(dead)
            log.error(
                "alert sink %s refused %d alert(s) for good: %s",
                sink.name,
                len(dead),
                why,
                extra={
                    "sink": sink.name,
                    "status": exc.status,
                    "event_ids": [e.alert.event_id for e in dead[:20]],
                },
            )
        if not exc.retryable:
            return True
        expired_ids = {e.alert_id for e in expired}
        retry = [e for e in group if e.alert_id not in expired_ids]
        if not retry:  # nothing of this batch key waits any more
            self._given_up(sink, [e.alert for e in dead])
        attempts = max((e.attempts for e in group), default=0) + 1
        resume_at = now + self._backoff.delay(attempts, exc.retry_after_s)
        if pause:
            self._paused_until[sink.name] = resume_at
        if retry:
            self._outbox.mark_retry(
                sink.name,
                [e.alert_id for e in retry],
                next_attempt_at=resume_at,
                status=exc.status,
                error=str(exc),
            )
            self._metrics.failed.labels(sink.name, "retry").inc(len(retry))
            report.retried += len(retry)
        if retry:  # else the error above already said these alerts were given up
            log.warning(
                "alert sink %s failed (attempt %d), retrying in %.2f s: %s",
                sink.name,
                attempts,
                resume_at - now,
                exc,
                extra={"sink": sink.name, "status": exc.status},
            )
        return not pause

    def _given_up(self, sink: AlertSink, alerts: list[Alert]) -> None:
        try:
            sink.given_up(alerts)
        except Exception:
            log.exception("alert sink %s failed to let go of given-up alerts", sink.name)

    def _tick(self, sink: AlertSink) -> None:
        try:
            sink.tick()
        except DeliveryError as exc:
            if not exc.retryable:  # sinks handle their own refusals; this is a bug
                log.error("alert sink %s: timed work refused: %s", sink.name, exc)
                return
            failures = self._tick_failures.get(sink.name, 0) + 1
            self._tick_failures[sink.name] = failures
            delay = self._backoff.delay(failures, exc.retry_after_s)
            self._paused_until[sink.name] = self._clock() + delay
            log.warning(
                "alert sink %s: timed work failed, pausing %.2f s: %s", sink.name, delay, exc
            )
        else:
            self._tick_failures.pop(sink.name, None)

    def _update_gauges(self) -> None:
        stats = self._outbox.stats(delivered=False)
        held: dict[str, int] = (
            {name: counts.pending for name, counts in stats.items()}
            if self._killed
            else self._outbox.pending_of_entities(self._suppressed)
        )
        configured = {s.name for s in self._sinks}
        for name in configured | set(stats):
            counts = stats.get(name)
            self._metrics.pending.labels(name).set(counts.pending if counts else 0)
            self._metrics.dead.labels(name).set(counts.dead if counts else 0)
            self._metrics.suppressed.labels(name).set(held.get(name, 0))
            orphaned = counts.pending if counts and name not in configured else 0
            self._metrics.orphaned.labels(name).set(orphaned)

    # ------------------------------------------------------------------ background thread

    def _sleep_s(self) -> float:
        """Until the next due alert or pause end, at most `dispatch_interval_s`."""
        now = self._clock()
        wake_at = now + self._cfg.dispatch_interval_s
        for sink in self._sinks if not self._killed else ():  # killed: poll the flags
            paused = self._paused_until.get(sink.name)
            due = (
                paused
                if paused is not None
                else self._outbox.next_due_at(sink.name, exclude_entities=self._suppressed)
            )
            if due is not None:
                wake_at = min(wake_at, due)
        return max(wake_at - now, MIN_SLEEP_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.dispatch_once()
            except Exception:
                log.exception("alert dispatch pass failed; trying again")
                self._stop.wait(self._cfg.dispatch_interval_s)
            self._wake.wait(self._sleep_s())

    def start(self) -> Dispatcher:
        """Run passes on a daemon thread until `stop`."""
        if self._thread is not None:
            raise RuntimeError("dispatcher already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="alert-dispatcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current write (bounded by the sinks' timeouts); pending alerts stay."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("alert dispatcher did not stop within %.1f s", timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        """True while the background thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def notify(self) -> None:
        """Wake the background thread now (enqueue does this by itself)."""
        self._wake.set()
