"""A single-node Apache Kafka 4.x broker in KRaft mode, from Maven Central jars.

The jars are fetched by Maven through ``infra/kafka/pom.xml`` into
``<state_dir>/kafka/lib``; the broker runs on the machine's Java 17. Data and logs stay
under ``<state_dir>/kafka``.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.local.base import LocalService, PrerequisiteError, port_is_open
from infra.local.kafka_security import AclRule, KafkaSecurity

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"

LOG4J2 = """\
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
"""


@dataclass(frozen=True)
class KafkaLayout:
    """What Kafka holds for the application: the topics the stack creates (name ->
    partitions) and, on the secured broker, every ACL of the client user."""

    topics: Mapping[str, int]
    acl_rules: tuple[AclRule, ...]


def create_missing_topics(client_config: dict[str, str], topics: Mapping[str, int]) -> None:
    """Create each topic of ``topics`` (name -> partitions) that the broker lacks, with one
    replica; an existing topic is left as it is."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({**client_config, "log_level": 0})
    existing = set(admin.list_topics(timeout=10).topics)
    new = [
        NewTopic(name, num_partitions=count, replication_factor=1)
        for name, count in topics.items()
        if name not in existing
    ]
    if not new:
        return
    for name, future in admin.create_topics(new, operation_timeout=10).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"creating topic {name!r} failed: {exc}") from exc


@dataclass
class KafkaService(LocalService):
    """Kafka broker and KRaft controller in one JVM, listening on 127.0.0.1 only.

    With ``security`` (``FACTORY_KAFKA_SECURE``), clients reach a SASL_SSL listener only,
    and ACLs decide what each user may do (``infra/local/kafka_security.py``).
    """

    name: str = "kafka"
    heap: str = "1g"
    security: KafkaSecurity | None = None

    def __post_init__(self) -> None:
        self.ports.setdefault("broker", 9092)
        self.ports.setdefault("controller", 9093)

    @property
    def lib_dir(self) -> Path:
        # The jars are an installation, shared by every state folder.
        return REPO_ROOT / ".factory" / "kafka" / "lib"

    def url(self) -> str:
        return f"127.0.0.1:{self.ports['broker']}"

    def fetch_jars(self) -> None:
        """Resolve the broker jars with Maven (a no-op when they are already there)."""
        if any(self.lib_dir.glob("kafka_2.13-*.jar")):
            return
        if shutil.which("mvn") is None:
            raise PrerequisiteError(
                "kafka: Maven is missing; install it (Debian: apt-get install maven)."
            )
        self.lib_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "package", f"-Dkafka.lib.dir={self.lib_dir}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise PrerequisiteError(
                "kafka: Maven could not fetch the broker jars: "
                + (result.stdout + result.stderr).strip().splitlines()[-1:][0]
            )

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise PrerequisiteError("kafka: Java 17 or newer is missing; install it "
                                    "(Debian: apt-get install openjdk-17-jre-headless).")
        out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
        version = out.split('"')[1] if '"' in out else "0"
        major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
        if major < 17:
            raise PrerequisiteError(f"kafka: Java {version} found, Kafka 4 needs Java 17 or newer.")
        return java

    def _classpath(self) -> str:
        return str(self.lib_dir / "*")

    @property
    def _secure_marker(self) -> Path:
        return self.home / "data" / "factory-secure"

    def admin_config(self) -> dict[str, Any]:
        """librdkafka options with which the factory's tooling administers the broker."""
        if self.security is None:
            return {"bootstrap.servers": self.url()}
        return self.security.client_config(self.url(), admin=True)

    def _write_config(self) -> Path:
        data = self.home / "data"
        broker, controller = self.ports["broker"], self.ports["controller"]
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller}",
            "listeners": f"PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "4",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "168",
            "message.max.bytes": str(2 * 1024 * 1024),
        }
        if self.security is not None:
            props.update(self.security.server_properties(broker, controller))
        path = self.home / "server.properties"
        path.touch(mode=0o600)
        path.chmod(0o600)  # the secured broker's file holds its admin password
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.home / "log4j2.yaml").write_text(LOG4J2)
        return path

    def prepare(self) -> None:
        java = self._java()
        self.fetch_jars()
        if self.security is not None:
            self.security.prepare()
        config = self._write_config()
        if (self.home / "data" / "meta.properties").exists():
            if self.security is not None and not self._secure_marker.exists():
                raise PrerequisiteError(
                    f"kafka: {self.home / 'data'} was formatted without "
                    "FACTORY_KAFKA_SECURE, so it holds no SCRAM users; use a fresh "
                    "FACTORY_STATE_DIR (or delete that folder) to run the secured broker.")
            return
        cluster_id = (self.home / "cluster-id")
        if not cluster_id.exists():
            raw = uuid.uuid4().bytes
            import base64

            cluster_id.write_text(base64.urlsafe_b64encode(raw).decode().rstrip("="))
        result = subprocess.run(
            [java, *self._jvm_flags(), "-cp", self._classpath(), "kafka.tools.StorageTool",
             # "--cluster-id=": a base64 id may begin with "-", which argparse would
             # take for an option (one id in 64 did).
             "format", f"--cluster-id={cluster_id.read_text().strip()}",
             "-c", str(config), "--ignore-formatted",
             *(self.security.format_arguments() if self.security else [])],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise PrerequisiteError(
                "kafka: formatting the KRaft storage failed: "
                + (result.stdout + result.stderr).strip()[-400:]
            )
        if self.security is not None:
            self._secure_marker.touch()

    def _jvm_flags(self) -> list[str]:
        return [
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
            "-Djava.awt.headless=true",
        ]

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            self._java(), f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", *self._jvm_flags(),
            "-cp", self._classpath(), "kafka.Kafka", str(self.home / "server.properties"),
        ]
        return argv, {}

    def start(self) -> None:
        """Start the broker; a secured one then gets the factory user's credential and
        ACLs from the settings (each start, so the environment stays the reference)."""
        super().start()
        if self.security is not None:
            self.security.grant(self.url())

    def healthy(self) -> bool:
        from confluent_kafka.admin import AdminClient

        if not port_is_open(self.ports["broker"]):
            return False
        admin = AdminClient({**self.admin_config(), "socket.timeout.ms": 2000,
                             "log_level": 0})
        metadata = admin.list_topics(timeout=2)
        return len(metadata.brokers) >= 1
