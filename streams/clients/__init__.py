"""Clients of the external services: Kafka, Redis, Feast and Triton.

Small confluent-kafka producers and readers (:mod:`~streams.clients.kafka_io`) and the
Kafka security settings, the service endpoints of a command, the Redis connection (one
server or a cluster), Feast's online store through the SDK and the fast path (with the
change marks of the terminal label arrays), the offline store export, the model route
kept in Redis, the Triton fleet and the loading of model versions into it. They depend on
the shared settings and topic names, the model contracts (:mod:`models`) and the local
stack's endpoints (:mod:`infra.local.manager`) only.
"""
