"""What every service shares: configuration, event contract, Kafka helpers, metrics and logging.

Nothing in here imports a service, so any service (or a notebook) can depend on it.
"""
