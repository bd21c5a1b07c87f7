"""The features of one scoring micro-batch, on columns.

The card windows of its transactions (:mod:`streams.dataplane.card_batch`), each card's
state read from and staged in the worker's changelog state, with the transactions not
keyed by their card and the poison events dead-lettered; and the terminal windows from
the terminals' label arrays (:mod:`streams.dataplane.terminal_features`). Below
:data:`SMALL_BATCH` events the one-event functions of :mod:`streams.dataplane.features`
do the work instead; both give the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from streams.dataplane.batches import RecordBatch
from streams.dataplane.card_batch import update_card_histories
from streams.dataplane.emit import Emitter
from streams.dataplane.features import terminal_window_features, update_card_history
from streams.dataplane.state import ChangelogState
from streams.dataplane.terminal_features import terminal_features_batch
from streams.records import ValidationError

SMALL_BATCH = 24
"""Below this many events the one-event functions cost less than the vectorised ones'
fixed cost (about 0.5 ms of numpy calls a batch); both give the same bits."""


def keyed_by_card(batch: RecordBatch, rows: np.ndarray, columns: dict[str, np.ndarray],
                  emitter: Emitter) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The valid transactions whose message key is their card id; the others are
    dead-lettered (``key_mismatch``): a card's events must share its partition, where
    its state lives, or its windows would be split."""
    keys = batch.key
    cards = columns["card_id"].tolist() if len(rows) else []
    wrong = [i for i, (row, card) in enumerate(zip(rows.tolist(), cards, strict=True))
             if keys[row] != b"%d" % card]
    if not wrong:
        return rows, columns
    for i in wrong:
        key = keys[int(rows[i])]
        emitter.dead_letter(batch, int(rows[i]), "validate", ValidationError(
            "key_mismatch", f"message key {key!r} is not the card id {cards[i]} (a "
                            "transaction is keyed by its card)"))
    keep = np.ones(len(rows), dtype=bool)
    keep[wrong] = False
    return rows[keep], {name: column[keep] for name, column in columns.items()}


def card_features_of(batch: RecordBatch, rows: np.ndarray, columns: dict[str, np.ndarray],
                     changelog: ChangelogState, emitter: Emitter
                     ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The card windows of every valid transaction, their states staged; a poison
    event (its card's state unreadable) is dead-lettered and the rest go on."""
    partitions = batch.partition[rows]
    index: dict[tuple[int, int], int] = {}
    card = np.fromiter(
        (index.setdefault(key, len(index))
         for key in zip(partitions.tolist(), columns["card_id"].tolist(), strict=True)),
        np.int64, len(rows))
    keys = list(index)
    states = [changelog.get(p, c) for p, c in keys]
    if len(rows) < SMALL_BATCH:
        return _card_features_one_by_one(batch, rows, columns, keys, states, card,
                                         changelog, emitter)
    try:
        new_states, features = update_card_histories(
            states, card, columns["event_time"], columns["amount"], columns["tx_id"])
    except Exception:  # noqa: BLE001 - find the event that cannot be handled
        return _card_features_one_by_one(batch, rows, columns, keys, states, card,
                                         changelog, emitter)
    put = changelog.put
    for (p, c), old, new in zip(keys, states, new_states, strict=True):
        if new is not old:
            put(p, c, new)
    return rows, columns, features


def _card_features_one_by_one(batch: RecordBatch, rows: np.ndarray,
                              columns: dict[str, np.ndarray],
                              keys: list[tuple[int, int]], states: list[bytes],
                              card: np.ndarray, changelog: ChangelogState, emitter: Emitter
                              ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The events one at a time through the one-event function (a small batch, or one
    the vectorised function could not handle): a poison event is dead-lettered."""
    states = list(states)
    kept: list[int] = []
    features: list[list[float]] = []
    for i, row in enumerate(rows.tolist()):
        k = int(card[i])
        try:
            states[k], row_features = update_card_history(
                states[k], float(columns["event_time"][i]), float(columns["amount"][i]),
                int(columns["tx_id"][i]))
        except Exception as exc:  # noqa: BLE001 - a poison event must not stop the worker
            emitter.dead_letter(batch, row, "features", exc)
            continue
        kept.append(i)
        features.append(row_features)
    for (p, c), state in zip(keys, states, strict=True):
        changelog.put(p, c, state)
    picked = np.array(kept, dtype=np.int64)
    return (rows[picked], {name: column[picked] for name, column in columns.items()},
            np.array(features, dtype=np.float64).reshape(len(kept), -1))


def terminal_features_of(labels: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
                         terminal_id: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The terminal features of each transaction (its terminal ``terminal_id``, its event
    time ``times``) from its terminal's label arrays ``labels``."""
    if len(times) < SMALL_BATCH:
        terminal = np.array([
            terminal_window_features(*labels[t], float(at)) for t, at in
            zip(terminal_id.tolist(), times.tolist(), strict=True)
        ]).reshape(len(times), -1)
    else:
        terminal_ids, terminal_index = np.unique(terminal_id, return_inverse=True)
        terminal = terminal_features_batch([labels[t] for t in terminal_ids.tolist()],
                                           terminal_index, times)
    return terminal
