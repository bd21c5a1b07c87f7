"""The replay: transactions and their labels produced onto Kafka from a dataset.

Validating a dataset and scheduling its labels (:mod:`~streams.replay.dataset`), the
paced or as-fast-as-possible producer (``factory replay``), and the event-clock replay
that moves a day at a time (:mod:`~streams.replay.step_replay`).
"""
