"""The data plane: what runs per event in the stream workers.

The Faust app and its batching transport, the scoring and labels pipelines, the card
and terminal features and their batch forms, worker state and its changelog, offsets and
the checkpoint, emitting scores and dead letters, the label watermark, the feature log,
the worker's metrics and its process entry (``python -m streams.dataplane.worker``).
It uses the clients (:mod:`streams.clients`) and nothing of the model lifecycle, the
replay or the jobs.
"""
