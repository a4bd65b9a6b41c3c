"""Kafka client construction and topic management shared by all services."""
