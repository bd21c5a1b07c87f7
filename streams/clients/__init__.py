"""Clients of the external services: Kafka, Redis, Feast and Triton.

Small confluent-kafka producers and readers (:mod:`~streams.clients.kafka_io`) and the
Kafka security settings, the Redis connection (one server or a cluster), Feast's online
store through the SDK and the fast path, the offline store export, the model route kept
in Redis, and the Triton fleet. They depend on the shared settings and topic names only.
"""
