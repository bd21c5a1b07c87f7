"""SASL/SCRAM over TLS and ACLs for the local Kafka broker (``FACTORY_KAFKA_SECURE``).

Clients reach one listener, ``SASL_SSL`` on 127.0.0.1 (SCRAM-SHA-512, the broker's
certificate signed by a CA generated under ``<state_dir>/kafka/tls``). The broker uses
the same listener for itself as the super user ``admin``; the KRaft controller listener
takes SASL/PLAIN from ``admin`` only (KRaft cannot authenticate controllers with SCRAM).
``StandardAuthorizer`` denies whatever no ACL allows, and the factory's user gets exactly
the :class:`AclRule` list it is given (the application names its topics and consumer
groups).

The factory user's password comes from the environment (``KAFKA_SASL_PASSWORD``), the
admin's from ``FACTORY_KAFKA_ADMIN_PASSWORD`` or, when unset, is generated once and
kept in the state folder, readable by its owner only. Both users are written into the
KRaft bootstrap records at format time as salted SCRAM credentials (no password on a
command line); each start sets the factory user's credential from the environment
again and brings its ACLs to those rules.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from infra.local.base import PrerequisiteError, ServiceError
from infra.local.tls import TlsFiles, ensure_tls
from infra.settings import Secret

MECHANISM = "SCRAM-SHA-512"
ITERATIONS = 8192
ADMIN_USER = "admin"


class AclRule(NamedTuple):
    """One ALLOW rule: ``resource`` (TOPIC, GROUP) ``name`` matched as ``pattern``
    (LITERAL, PREFIXED) for ``operation``."""

    resource: str
    name: str
    pattern: str
    operation: str


def salted_scram(password: str, iterations: int = ITERATIONS,
                 salt: bytes | None = None) -> str:
    """The ``--add-scram`` value of a SCRAM-SHA-512 credential in its salted form
    (``SaltedPassword = Hi(password, salt, i)``, RFC 5802: PBKDF2 with HMAC-SHA-512)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (f'iterations={iterations},salt="{base64.b64encode(salt).decode()}",'
            f'saltedpassword="{base64.b64encode(salted).decode()}"')


def _jaas_quoted(value: str, what: str) -> str:
    if '"' in value or "\\" in value or "\n" in value:
        raise PrerequisiteError(f"kafka: {what} must not contain '\"', '\\' or a line break.")
    return value


@dataclass
class KafkaSecurity:
    """The secured broker's users, certificates, listener settings and ACLs.

    ``home`` is the Kafka service's folder; ``username`` and ``password`` are the
    factory's client user (``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``), and
    ``acl_rules`` everything that user may do.
    """

    home: Path
    username: str
    password: Secret | None
    acl_rules: tuple[AclRule, ...]
    admin_password_setting: Secret | None = None

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.home / "tls")

    @property
    def _admin_secret_file(self) -> Path:
        return self.home / "admin.secret"

    def check(self) -> None:
        """Fail with one line when a setting the secured broker needs is missing."""
        if not self.password:
            raise PrerequisiteError(
                "kafka: FACTORY_KAFKA_SECURE needs the factory user's password in "
                "KAFKA_SASL_PASSWORD (see docs/security.md).")
        if self.username == ADMIN_USER:
            raise PrerequisiteError(f"kafka: KAFKA_SASL_USERNAME must not be {ADMIN_USER!r}, "
                                    "the broker's own super user.")
        _jaas_quoted(self.username, "KAFKA_SASL_USERNAME")

    def admin_password(self) -> str:
        """``FACTORY_KAFKA_ADMIN_PASSWORD``, else the one generated at the first start."""
        if self.admin_password_setting:
            return _jaas_quoted(self.admin_password_setting.get(),
                                "FACTORY_KAFKA_ADMIN_PASSWORD")
        if not self._admin_secret_file.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._admin_secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(24))
        return self._admin_secret_file.read_text().strip()

    def prepare(self) -> None:
        """Check the settings; generate the CA and the broker's certificate if missing."""
        self.check()
        ensure_tls(self.tls.folder, common_name="fraud-factory kafka")

    def server_properties(self, broker: int, controller: int) -> dict[str, str]:
        """The broker's listener, SASL, TLS and authorizer settings."""
        admin = self.admin_password()
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        return {
            "listeners": f"CLIENT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"CLIENT://127.0.0.1:{broker}",
            "listener.security.protocol.map": "CLIENT:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name": "CLIENT",
            "controller.listener.names": "CONTROLLER",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.client.sasl.enabled.mechanisms": MECHANISM,
            "listener.name.client.scram-sha-512.sasl.jaas.config":
                f'{scram} required username="{ADMIN_USER}" password="{admin}";',
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config":
                f'{plain} required username="{ADMIN_USER}" password="{admin}" '
                f'user_{ADMIN_USER}="{admin}";',
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls.server_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.ca_cert),
            "ssl.client.auth": "none",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN_USER}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def format_arguments(self) -> list[str]:
        """``kafka-storage format`` options that write both users' SCRAM credentials."""
        assert self.password is not None
        return [
            f"--add-scram={MECHANISM}=[name={ADMIN_USER},{salted_scram(self.admin_password())}]",
            f"--add-scram={MECHANISM}=[name={self.username},"
            f"{salted_scram(self.password.get())}]",
        ]

    def client_config(self, bootstrap: str, *, admin: bool = False) -> dict[str, Any]:
        """librdkafka options for the factory user, or for ``admin``."""
        if admin:
            user, password = ADMIN_USER, self.admin_password()
        else:
            self.check()
            assert self.password is not None
            user, password = self.username, self.password.get()
        return {
            "bootstrap.servers": bootstrap, "security.protocol": "SASL_SSL",
            "sasl.mechanism": MECHANISM, "ssl.ca.location": str(self.tls.ca_cert),
            "sasl.username": user, "sasl.password": password,
        }

    def grant(self, bootstrap: str) -> None:
        """Set the factory user's credential from the environment and its ACLs to
        ``acl_rules`` (missing rules created, others removed)."""
        from confluent_kafka.admin import (
            AdminClient,
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        self.check()
        assert self.password is not None
        admin = AdminClient({**self.client_config(bootstrap, admin=True), "log_level": 0})
        upsert = UserScramCredentialUpsertion(
            self.username, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS),
            self.password.get().encode())
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result()
        principal = f"User:{self.username}"
        wanted = {rule_binding(rule, principal) for rule in self.acl_rules}
        found = set(admin.describe_acls(acl_filter(principal)).result(timeout=30))
        if wanted - found:
            for future in admin.create_acls(sorted(wanted - found, key=str)).values():
                future.result(timeout=30)
        if found - wanted:
            filters = [binding_filter(b) for b in sorted(found - wanted, key=str)]
            for future in admin.delete_acls(filters).values():
                future.result(timeout=30)
        # The broker applies both from the metadata log a moment after the controller
        # accepted them: wait until it shows them, so that the next client is let in.
        deadline = time.monotonic() + 60
        while set(admin.describe_acls(acl_filter(principal)).result(timeout=30)) != wanted:
            if time.monotonic() > deadline:
                raise ServiceError("kafka: the broker did not apply the factory user's ACLs "
                                   "within 60 s")
            time.sleep(0.2)
        self._wait_for_login(bootstrap, deadline)

    def _wait_for_login(self, bootstrap: str, deadline: float) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        factory = AdminClient({**self.client_config(bootstrap), "log_level": 0})
        while True:
            try:
                factory.list_topics(timeout=2)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise ServiceError(f"kafka: user {self.username!r} cannot log in with "
                                       "KAFKA_SASL_PASSWORD after it was set") from None


def rule_binding(rule: AclRule, principal: str) -> Any:  # noqa: ANN401 - confluent type
    """The ALLOW ``AclBinding`` of ``rule`` for ``principal``, from any host."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    return AclBinding(ResourceType[rule.resource], rule.name,
                      ResourcePatternType[rule.pattern], principal, "*",
                      AclOperation[rule.operation], AclPermissionType.ALLOW)


def acl_filter(principal: str) -> Any:  # noqa: ANN401 - confluent type
    """Every ACL of ``principal``."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    anything: Any = None  # matches any name and any host (the stubs want a str)
    return AclBindingFilter(ResourceType.ANY, anything, ResourcePatternType.ANY, principal,
                            anything, AclOperation.ANY, AclPermissionType.ANY)


def binding_filter(binding: Any) -> Any:  # noqa: ANN401 - confluent type
    """A filter that matches exactly ``binding``."""
    from confluent_kafka.admin import AclBindingFilter

    return AclBindingFilter(binding.restype, binding.name, binding.resource_pattern_type,
                            binding.principal, binding.host, binding.operation,
                            binding.permission_type)
