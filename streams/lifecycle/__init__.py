"""The model lifecycle: what runs per model version.

The retrainer and its inputs, when to retrain (drift, schedule, follow-ups), the gate's
window, the swap with its shadow phase and rollback, choosing the champion, the
model-events topic, operators' model commands, the serving guard and the simulated
investigators. It uses the clients and :mod:`models`; never the data plane's internals.
"""
