"""The feature-ingestion service: `events` -> window features -> Feast online store + `features`.

Modules: `service` (the consume/process/commit loop and rebalance handling), `changelog`
(window-state checkpoints that move with their partitions), `dead_letters` (rejected events
with their reason), `metrics`.
"""
