"""Kafka client construction, topic management and dead letters shared by all services."""
