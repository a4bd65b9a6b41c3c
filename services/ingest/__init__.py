"""The feature-ingestion service: `events` -> window features -> Feast online store + `features`.

Modules: `service` (the consume/process/commit loop and rebalance handling), `changelog`
(window-state checkpoints that move with their partitions), `metrics`. Rejected events go to
the dead-letter topic through `services.common.kafka.dead_letters`, shared with the router.
"""
