"""Whether Kafka lets this process's user do what it is about to do, asked before it starts.

A client with a wrong password, an untrusted certificate or a missing ACL otherwise
retries for ever or fails deep inside a library with a stack trace; asked here first,
the answer is one line: which user, which topic or group, which right.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient

from infra.settings import KafkaSettings

_RETRIED = {KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
            KafkaError.NOT_COORDINATOR, KafkaError.LEADER_NOT_AVAILABLE,
            KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT}


class KafkaAccessError(RuntimeError):
    """Kafka refused this user something; the message is one line."""


@dataclass(frozen=True)
class KafkaNeeds:
    """The topics a client reads and writes and the consumer groups it uses.

    A topic that does not exist yet is not checked (creating it is its owner's first
    step, and is refused there with the broker's own error).
    """

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


def exit_unless_allowed(kafka: KafkaSettings, bootstrap: str, needs: KafkaNeeds,
                        command: str) -> None:
    """:func:`check_access` for a client with credentials or TLS; ``SystemExit`` with one
    line (``"<command>: ..."``, exit status 1) for what Kafka refuses. A PLAINTEXT
    client has neither, and is not asked."""
    if kafka.security_protocol == "PLAINTEXT":
        return
    try:
        check_access(kafka.client_config(bootstrap), needs)
    except KafkaAccessError as exc:
        raise SystemExit(f"{command}: {exc}") from None


def check_access(client_config: dict[str, Any], needs: KafkaNeeds,
                 timeout_s: float = 30.0) -> None:
    """Raise :class:`KafkaAccessError` for the first thing Kafka refuses ``needs``.

    ``client_config`` holds the librdkafka connection options
    (``KafkaSettings.client_config``). Rights are read from the broker's authorized
    operations, so nothing is created, read or written here.
    """
    user = client_config.get("sasl.username") or "ANONYMOUS"
    bootstrap = client_config.get("bootstrap.servers")
    errors: list[KafkaError] = []
    config: dict[str, Any] = {**client_config, "error_cb": errors.append, "log_level": 0}
    admin = AdminClient(config)
    deadline = time.monotonic() + timeout_s
    _connect(admin, errors, user, bootstrap, deadline)
    required: dict[str, set[AclOperation]] = {}
    for names, operation in ((needs.read, AclOperation.READ), (needs.write, AclOperation.WRITE)):
        for name in names:
            required.setdefault(name, set()).add(operation)
    for name, operations in _topic_operations(admin, list(required), deadline).items():
        if operations is None:
            continue  # the broker has no authorizer
        for operation in sorted(required[name] - operations, key=lambda o: o.value):
            verb = "read" if operation == AclOperation.READ else "write to"
            raise KafkaAccessError(f"Kafka user {user!r} is not authorized to {verb} topic "
                                   f"{name!r} (no {operation.name} ACL)")
    for group, operations in _group_operations(admin, needs.groups, deadline).items():
        if operations is not None and AclOperation.READ not in operations:
            raise KafkaAccessError(f"Kafka user {user!r} is not authorized to use consumer "
                                   f"group {group!r} (no READ ACL)")


def _connect(admin: AdminClient, errors: list[KafkaError], user: str, bootstrap: Any,
             deadline: float) -> None:
    """Wait for the cluster's metadata; the client's own errors say why it does not come."""
    while True:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException as exc:
            failure = exc.args[0] if exc.args else None
        admin.poll(0)  # serves error_cb
        for error in errors:
            if error.code() == KafkaError._AUTHENTICATION and not _interrupted(error):
                raise KafkaAccessError(
                    f"Kafka refused the credentials of user {user!r} (SASL authentication "
                    f"failed at {bootstrap})")
            if error.code() == KafkaError._SSL:
                raise KafkaAccessError(f"TLS with Kafka at {bootstrap} failed: "
                                       f"{_reason(error)}")
        if time.monotonic() > deadline:
            reason = _reason(errors[-1]) if errors else str(failure)
            raise KafkaAccessError(f"cannot reach Kafka at {bootstrap}: {reason}")


def _interrupted(error: KafkaError) -> bool:
    """Whether an authentication error is a connection lost or timed out during the
    exchange (tried again) rather than the broker's refusal."""
    text = error.str().lower()
    return any(word in text for word in ("transport failure", "timed out", "disconnected"))


def _reason(error: KafkaError) -> str:
    """The broker-independent part of a librdkafka error string, on one line."""
    text = error.str().split(": ", 1)[-1] if "://" in error.str() else error.str()
    return " ".join(text.split())


def _topic_operations(admin: AdminClient, names: list[str],
                      deadline: float) -> dict[str, set[AclOperation] | None]:
    """Each existing topic's authorized operations (None: the broker has no authorizer;
    empty: not even DESCRIBE)."""
    return _operations(
        "topic", names, deadline, KafkaError.TOPIC_AUTHORIZATION_FAILED,
        lambda pending: admin.describe_topics(TopicCollection(pending),
                                              include_authorized_operations=True,
                                              request_timeout=10),
        missing=(KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC))


def _group_operations(admin: AdminClient, groups: Iterable[str],
                      deadline: float) -> dict[str, set[AclOperation] | None]:
    """Each consumer group's authorized operations."""
    return _operations(
        "consumer group", list(groups), deadline, KafkaError.GROUP_AUTHORIZATION_FAILED,
        lambda pending: admin.describe_consumer_groups(pending,
                                                       include_authorized_operations=True,
                                                       request_timeout=10))


def _operations(what: str, names: list[str], deadline: float, denied: int,
                describe: Callable[[list[str]], dict[str, Future]],
                missing: tuple[int, ...] = ()) -> dict[str, set[AclOperation] | None]:
    """The authorized operations of each of ``names`` (``describe`` asks for them);
    what fails for a passing reason (a coordinator still loading, a timeout) is asked
    again until ``deadline``."""
    pending = list(dict.fromkeys(names))
    found: dict[str, set[AclOperation] | None] = {}
    while pending:
        futures, pending = describe(pending), []
        for name, future in futures.items():
            try:
                operations = future.result().authorized_operations
                found[name] = None if operations is None else set(operations)
            except KafkaException as exc:
                code = exc.args[0].code()
                if code == denied:
                    found[name] = set()
                elif code in missing:
                    continue
                elif code in _RETRIED and time.monotonic() < deadline:
                    pending.append(name)
                else:
                    raise KafkaAccessError(f"describing {what} {name!r} failed: "
                                           f"{exc.args[0].str()}") from None
        if pending:
            time.sleep(0.5)
    return found
