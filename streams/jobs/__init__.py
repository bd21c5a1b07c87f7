"""The jobs and the CLI on top of everything else.

``factory`` (:mod:`~streams.jobs.cli`), the main job and the closed loop with their
reports, the scenario table, ``factory bootstrap``, ``factory serve`` and ``factory init``.
"""
