"""Locked doors, tested for real: the factory with SASL/SCRAM over TLS and ACLs on Kafka
and an ACL user on Redis.

The unit tests at the top check the generated configuration without a service. The
integration tests share one secured stack (``factory up`` with ``FACTORY_KAFKA_SECURE=1``
in a fresh state folder, on free ports, distinctive passwords in the environment) and
one run of the factory on it: clients reach only the SASL_SSL listener, the factory user
has exactly its ACLs and no ACL means no access, a wrong password or a missing ACL stops
a worker with one line, the whole factory scores replayed transactions, every service
and metrics server listens on 127.0.0.1 only, and no password shows up in a log file, a
metric, a model event, a dead letter or a command line.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

from infra.local.base import free_port
from infra.local.kafka_security import (
    ADMIN_USER,
    KafkaSecurity,
    acl_filter,
    rule_binding,
    salted_scram,
)
from infra.local.manager import Endpoints, Stack
from infra.local.redis import RedisService
from infra.settings import Secret
from streams.clients.feast_client import feast_redis_connection
from streams.settings import REPO_ROOT, Settings
from streams.topics import FACTORY_TOPICS, factory_acl_rules, kafka_layout
from tests.streams.factory_shell import Shell, shell_env, wait_ready

KAFKA_PASSWORD = "kafka-factory-pw-Q7w3Zx"
ADMIN_PASSWORD = "kafka-admin-pw-R4t8Vn"
REDIS_PASSWORD = "redis-factory-pw-K2m9Lp"
OUTSIDER_PASSWORD = "kafka-outsider-pw-J5c6Hd"
PASSWORDS = (KAFKA_PASSWORD, ADMIN_PASSWORD, REDIS_PASSWORD, OUTSIDER_PASSWORD)

REPLAYED = 3000
integration = pytest.mark.integration


def settings_from(env: dict[str, str]) -> Settings:
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings.from_env()


# Configuration, without a service ------------------------------------------------------


def test_secure_settings_point_clients_at_scram_over_tls_and_never_print_the_password(
        tmp_path: Path) -> None:
    settings = settings_from({"FACTORY_KAFKA_SECURE": "1", "KAFKA_SASL_PASSWORD": "s3cret-x",
                              "FACTORY_STATE_DIR": str(tmp_path), "REDIS_USERNAME": "factory",
                              "REDIS_PASSWORD": "r3dis-x"})
    assert settings.kafka_secure
    config = settings.kafka.client_config("127.0.0.1:1")
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "factory"
    assert config["ssl.ca.location"] == str(tmp_path.resolve() / "kafka" / "tls" / "ca.pem")
    assert "s3cret-x" not in repr(settings) and "r3dis-x" not in repr(settings)
    # SASL_SSL without a broker named means the same; a named broker is left alone.
    assert settings_from({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}).kafka_secure
    external = settings_from({"FACTORY_KAFKA_SECURE": "1",
                              "KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9093"})
    assert not external.kafka_secure
    assert external.kafka.security_protocol == "PLAINTEXT"


def test_the_secured_broker_has_no_plaintext_listener_and_denies_what_no_acl_allows(
        tmp_path: Path) -> None:
    security = KafkaSecurity(tmp_path, "factory", Secret(KAFKA_PASSWORD),
                             tuple(factory_acl_rules()), Secret(ADMIN_PASSWORD))
    props = security.server_properties(9092, 9093)
    protocols = dict(entry.split(":") for entry in
                     props["listener.security.protocol.map"].split(","))
    assert protocols == {"CLIENT": "SASL_SSL", "CONTROLLER": "SASL_PLAINTEXT"}
    assert props["advertised.listeners"] == "CLIENT://127.0.0.1:9092"
    assert all(listener.split("://")[1].startswith("127.0.0.1:")
               for listener in props["listeners"].split(","))
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == f"User:{ADMIN_USER}"
    # The factory user's password is set through the admin API and SCRAM's salted form,
    # never on a command line or in the broker's files.
    assert KAFKA_PASSWORD not in json.dumps(props)
    assert not any(KAFKA_PASSWORD in arg or ADMIN_PASSWORD in arg
                   for arg in security.format_arguments())


def test_salted_scram_is_rfc_5802s_salted_password() -> None:
    import base64
    import hashlib
    import hmac

    value = salted_scram("pencil", iterations=4096, salt=b"\x01" * 16)
    salted = base64.b64decode(value.split('saltedpassword="')[1].rstrip('"'))
    # Hi(str, salt, i) of RFC 5802, by its definition: U1 = HMAC(str, salt + INT(1)), ...
    u = hmac.new(b"pencil", b"\x01" * 16 + b"\x00\x00\x00\x01", hashlib.sha512).digest()
    result = bytearray(u)
    for _ in range(4095):
        u = hmac.new(b"pencil", u, hashlib.sha512).digest()
        result = bytearray(a ^ b for a, b in zip(result, u, strict=True))
    assert salted == bytes(result)


def test_the_factory_user_gets_its_topics_and_prefixes_and_nothing_cluster_wide() -> None:
    rules = factory_acl_rules()
    assert {r.resource for r in rules} == {"TOPIC", "GROUP"}
    assert not {r for r in rules if r.operation in ("ALL", "ALTER", "DELETE", "ALTER_CONFIGS")}
    assert not {r for r in rules if r.name in ("", "*")}
    literal = {r.name for r in rules if r.pattern == "LITERAL"}
    assert literal == set(FACTORY_TOPICS)
    assert {r.operation for r in rules if r.resource == "GROUP"} == {"READ", "DESCRIBE"}


def test_a_worker_asks_for_its_sources_outputs_changelogs_and_groups() -> None:
    from streams.dataplane.app import kafka_needs
    from streams.dataplane.config import WorkerConfig

    config = WorkerConfig("k", "r", "t", Settings(), app_id="fraud-factory", role="score")
    needs = kafka_needs(config)
    changelog = "fraud-factory-card-state-changelog"
    assert set(needs.read) == {"transactions", changelog}
    assert set(needs.write) == {"scores", "transactions-dlq", changelog}
    assert set(needs.groups) == {"fraud-factory", "fraud-factory-fill", "fraud-factory-ends",
                                 f"{changelog}-restore"}
    labels = kafka_needs(WorkerConfig("k", "r", "t", Settings(), app_id="g", role="labels"))
    assert set(labels.read) == {"labels", "g-terminal-state-changelog"}
    assert "scores" not in labels.write


def test_the_local_redis_keeps_only_a_hash_and_turns_the_default_user_off(
        tmp_path: Path) -> None:
    redis = RedisService(tmp_path, ports={"redis": 6390}, password=REDIS_PASSWORD,
                         username="factory")
    lines = redis.acl_lines()
    assert lines[0].startswith("user default off")
    assert lines[1].startswith("user factory on #")
    assert "-@dangerous" in lines[1] and "+@all" not in lines[1]
    assert REDIS_PASSWORD not in "\n".join(lines)
    assert REDIS_PASSWORD not in redis.display_url()
    assert feast_redis_connection(redis.url()) == (
        f"127.0.0.1:6390,username=factory,password={REDIS_PASSWORD}")


# The secured stack ---------------------------------------------------------------------


@dataclass
class Secured:
    """A secured stack started with ``factory up``, and what its commands printed."""

    shell: Shell
    tmp: Path
    settings: Settings
    endpoints: Endpoints
    outputs: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        return self.settings.state_dir

    def run(self, *argv: str, timeout: float = 300) -> str:
        out = self.shell(*argv, timeout=timeout)
        self.outputs.append(out)
        return out

    def admin(self):  # noqa: ANN201 - confluent type
        from confluent_kafka.admin import AdminClient

        kafka = Stack(self.settings, kafka_layout(self.settings.partitions)).services["kafka"]
        return AdminClient({**kafka.admin_config(), "log_level": 0})  # type: ignore[attr-defined]

    def client(self, **overrides: str) -> dict[str, str]:
        return {**self.settings.kafka.client_config(self.endpoints.kafka), **overrides}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("locked-doors")
    env = shell_env(tmp)
    env.update({"FACTORY_KAFKA_SECURE": "1", "KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
                "FACTORY_KAFKA_ADMIN_PASSWORD": ADMIN_PASSWORD, "REDIS_USERNAME": "factory",
                "REDIS_PASSWORD": REDIS_PASSWORD})
    shell = Shell(env, tmp)
    settings = settings_from(env)
    try:
        out = shell("up", timeout=600)
        assert "feature_repo applied" in out, out  # a fresh clone's workers need it
        endpoints = Endpoints.load(settings.state_dir / "endpoints.json")
        yield Secured(shell, tmp, settings, endpoints, outputs=[out])
    finally:
        shell.stop_all()
        subprocess.run([sys.executable, "-m", "streams.jobs.cli", "down"], cwd=REPO_ROOT,
                       env=env, capture_output=True, timeout=120)


@dataclass
class FactoryRun:
    scores: list[dict]
    metrics_text: dict[str, str]


def read_all(secured: Secured, topic: str) -> list:
    """Every record on ``topic`` now."""
    from streams.clients.kafka_io import consume, topic_end_offsets

    ends = topic_end_offsets(secured.endpoints.kafka, secured.settings, topic)
    return consume(secured.endpoints.kafka, secured.settings, topic, timeout_s=60,
                   until=lambda received: len(received) >= sum(ends.values()))


def _metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


@pytest.fixture(scope="module")
def factory_run(secured: Secured) -> FactoryRun:
    """The factory on the secured stack: a model trained and served, both workers, the
    retrainer, transactions replayed and scored, a bad one dead-lettered, and a second
    version promoted (model events)."""
    from streams.clients.kafka_io import consume, produce

    s = secured
    train = ["model", "train", "--customers", "200", "--terminals", "400", "--days", "45"]
    s.run(*train, "--promote")
    port = s.settings.worker_metrics_port
    labels = s.shell.start("labels-worker", "worker", "--role", "labels")
    scorer = s.shell.start("score-worker", "worker", "--role", "score")
    wait_ready(port + 1, labels, s.tmp / "labels-worker.log")
    wait_ready(port, scorer, s.tmp / "score-worker.log")
    retrainer = s.shell.start("retrainer", "retrainer", "--feature-log",
                              str(s.state / "feature_log"), "--no-guard",
                              "--schedule-days", "0")
    s.pids.update({"score-worker": scorer.pid, "labels-worker": labels.pid,
                   "retrainer": retrainer.pid})
    s.run("replay", "--simulate", "--customers", "200", "--terminals", "400", "--days", "50",
          "--quiet", "--limit", str(REPLAYED))
    seen: set[int] = set()

    def all_scored(received: list) -> bool:
        seen.update(json.loads(m.value)["tx_id"] for m in received[len(records):])
        records[:] = received
        return len(seen) >= REPLAYED

    records: list = []
    consume(s.endpoints.kafka, s.settings, "scores", until=all_scored, timeout_s=300)
    produce(s.endpoints.kafka, s.settings, [(b"7", b"not json at all")])
    consume(s.endpoints.kafka, s.settings, "transactions-dlq", until=bool, timeout_s=60)
    s.run(*train)
    s.run("model", "promote", "2", "--force", "--shadow-rows", "1", "--shadow-timeout", "10")
    retrainer_port = s.settings.retrainer_metrics_port
    deadline = time.monotonic() + 120
    while True:
        try:
            retrainer_metrics = _metrics_text(retrainer_port)
            break
        except (OSError, http.client.HTTPException):
            assert retrainer.poll() is None, (s.tmp / "retrainer.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the retrainer's metrics never answered"
            time.sleep(0.5)
    return FactoryRun(
        scores=[json.loads(m.value) for m in records],
        metrics_text={"score-worker": _metrics_text(port),
                      "labels-worker": _metrics_text(port + 1),
                      "retrainer": retrainer_metrics})


@integration
def test_clients_reach_kafka_only_over_sasl_ssl(secured: Secured) -> None:
    from confluent_kafka.admin import AdminClient

    def reaches(config: dict[str, str]) -> bool:
        try:
            AdminClient({**config, "log_level": 0}).list_topics(timeout=4)
            return True
        except Exception:  # noqa: BLE001 - any failure is "does not reach"
            return False

    settings = secured.settings
    broker = secured.endpoints.kafka
    controller = f"127.0.0.1:{settings.kafka_controller_port}"
    assert reaches(secured.client())
    assert not reaches({"bootstrap.servers": broker})
    assert not reaches({"bootstrap.servers": broker, "security.protocol": "SSL",
                        "ssl.ca.location": settings.kafka.ssl_ca_location})
    assert not reaches(secured.client(**{"ssl.ca.location": "/etc/ssl/certs/"
                                                            "ca-certificates.crt"}))
    assert not reaches({"bootstrap.servers": controller})
    assert not reaches(secured.client(**{"bootstrap.servers": controller}))
    # What the running broker says of its listeners: none without authentication, the
    # clients' one with TLS, all on 127.0.0.1.
    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource(ConfigResource.Type.BROKER, "1")
    admin = secured.admin()
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    protocols = dict(entry.split(":") for entry in
                     config["listener.security.protocol.map"].value.split(","))
    listeners = dict(entry.split("://") for entry in config["listeners"].value.split(","))
    assert protocols == {"CLIENT": "SASL_SSL", "CONTROLLER": "SASL_PLAINTEXT"}
    assert listeners == {"CLIENT": broker, "CONTROLLER": controller}
    assert config["advertised.listeners"].value == f"CLIENT://{broker}"


@integration
def test_the_factory_user_has_exactly_its_acls_and_no_acl_means_no_access(
        secured: Secured) -> None:
    from confluent_kafka import KafkaException, TopicCollection
    from confluent_kafka.admin import (
        AdminClient,
        NewTopic,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = secured.admin()
    principal = f"User:{secured.settings.kafka.sasl_username}"
    found = set(admin.describe_acls(acl_filter(principal)).result(timeout=30))
    assert found == {rule_binding(rule, principal) for rule in factory_acl_rules()}

    # A topic that no ACL names is closed to a user with a valid password.
    user, unguarded = f"nobody-{uuid.uuid4().hex[:6]}", f"unguarded-{uuid.uuid4().hex[:6]}"
    upsert = UserScramCredentialUpsertion(
        user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), OUTSIDER_PASSWORD.encode())
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)
    for future in admin.create_topics([NewTopic(unguarded, 1, 1)]).values():
        future.result(timeout=30)
    nobody = AdminClient({**secured.client(**{"sasl.username": user,
                                              "sasl.password": OUTSIDER_PASSWORD}),
                          "log_level": 0})
    deadline = time.monotonic() + 30
    while True:  # the new credential reaches the broker a moment after it is accepted
        try:
            nobody.list_topics(timeout=2)
            break
        except KafkaException:
            assert time.monotonic() < deadline, "the new user never logged in"
    future = nobody.describe_topics(TopicCollection([unguarded]))[unguarded]
    with pytest.raises(KafkaException, match="TOPIC_AUTHORIZATION_FAILED"):
        future.result(timeout=30)


def _worker(secured: Secured, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.jobs.cli", "worker", "--role", "score",
         "--metrics-port", str(free_port())],
        cwd=REPO_ROOT, env={**secured.shell.env, **env}, capture_output=True, text=True,
        timeout=120)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode != 0, "the worker ran"
    assert len(lines) == 1, lines[-40:]
    return lines[0]


@integration
def test_a_worker_with_a_wrong_password_exits_with_one_line(secured: Secured) -> None:
    started = time.monotonic()
    line = _one_line(_worker(secured, KAFKA_SASL_PASSWORD="not-the-password"))
    assert line == (f"factory worker: Kafka refused the credentials of user 'factory' (SASL "
                    f"authentication failed at {secured.endpoints.kafka})")
    assert time.monotonic() - started < 60


@integration
def test_a_worker_without_the_acl_to_its_topic_exits_with_one_line(secured: Secured) -> None:
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    from infra.local.kafka_security import AclRule

    # A user with the factory's consumer groups, and no right on any topic.
    admin, user = secured.admin(), "outsider"
    upsert = UserScramCredentialUpsertion(
        user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), OUTSIDER_PASSWORD.encode())
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)
    groups = [rule_binding(AclRule("GROUP", "fraud-factory", "PREFIXED", op), f"User:{user}")
              for op in ("READ", "DESCRIBE")]
    for future in admin.create_acls(groups).values():
        future.result(timeout=30)
    time.sleep(1)  # the broker applies the new user and ACLs from its metadata log
    line = _one_line(_worker(secured, KAFKA_SASL_USERNAME=user,
                             KAFKA_SASL_PASSWORD=OUTSIDER_PASSWORD))
    assert line == ("factory worker: Kafka user 'outsider' is not authorized to read topic "
                    "'transactions' (no READ ACL)")


@integration
def test_redis_lets_in_the_factory_user_with_its_rights_only(secured: Secured) -> None:
    import redis

    url = secured.endpoints.redis
    port = secured.settings.redis_port
    factory = redis.Redis.from_url(url)
    assert factory.ping()
    for command in (("FLUSHALL",), ("CONFIG", "GET", "requirepass"), ("ACL", "LIST"),
                    ("KEYS", "*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            factory.execute_command(*command)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).ping()  # the default user is off
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port, username="factory", password="nope").ping()


@integration
def test_the_secured_factory_scores_replayed_transactions(factory_run: FactoryRun) -> None:
    assert len({record["tx_id"] for record in factory_run.scores}) == REPLAYED
    assert {record["model_version"] for record in factory_run.scores} == {1}


def _listening(pgid: int) -> set[tuple[str, int]]:
    """The TCP addresses and ports that the processes of group ``pgid`` listen on (an
    IPv4-mapped IPv6 address, as Java binds 127.0.0.1, as its IPv4 address)."""
    inodes: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except (OSError, ValueError):
            continue
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or int(fields[9]) not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1]
                           for i in range(0, len(address), 8))
            ip = ipaddress.ip_address(socket.inet_ntop(family, raw))
            mapped = getattr(ip, "ipv4_mapped", None)
            found.add((str(mapped or ip), int(port, 16)))
    return found


@integration
def test_every_service_and_metrics_server_listens_on_loopback_only(
        secured: Secured, factory_run: FactoryRun) -> None:
    s = secured.settings
    expected = {
        "kafka": {s.kafka_port, s.kafka_controller_port}, "redis": {s.redis_port},
        "triton": {s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port},
        "prometheus": {s.prometheus_port}, "alertmanager": {s.alertmanager_port},
        "score-worker": {s.worker_metrics_port},
        "labels-worker": {s.worker_metrics_port + 1},
        "retrainer": {s.retrainer_metrics_port},
    }
    pids = {name: int((secured.state / name / "pid").read_text())
            for name in ("kafka", "redis", "triton", "prometheus", "alertmanager")}
    pids.update(secured.pids)
    for name, ports in expected.items():
        listening = _listening(pids[name])
        assert ports <= {port for _, port in listening}, (name, listening)
        assert {address for address, _ in listening} == {"127.0.0.1"}, (name, listening)


@integration
def test_no_password_in_a_log_a_metric_a_model_event_a_dead_letter_or_a_command_line(
        secured: Secured, factory_run: FactoryRun) -> None:
    def hits(data: bytes, where: str, allowed: tuple[str, ...] = ()) -> list[str]:
        return [f"{password} in {where}" for password in PASSWORDS
                if password not in allowed and password.encode() in data]

    found: list[str] = []
    # The two files that must hold a credential, readable by their owner only.
    stores = {secured.state / "endpoints.json": (REDIS_PASSWORD,),
              secured.state / "kafka" / "server.properties": (ADMIN_PASSWORD,)}
    for path in stores:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    files = [p for p in secured.tmp.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "service.log" for p in files)
    assert (secured.tmp / "score-worker.log").exists()
    for path in files:
        found += hits(path.read_bytes(), str(path), stores.get(path, ()))
    for output in secured.outputs:
        found += hits(output.encode(), "a command's output")
    for name, text in factory_run.metrics_text.items():
        assert "factory_" in text
        found += hits(text.encode(), f"{name} /metrics")
    for topic in ("model-events", "transactions-dlq"):
        records = read_all(secured, topic)
        assert records, f"nothing on {topic}"
        for r in records:
            found += hits(b"".join([r.key or b"", r.value or b"",
                                    *(k.encode() + (v or b"") for k, v in r.headers)]), topic)
    for pid in (*secured.pids.values(),
                *(int((secured.state / n / "pid").read_text()) for n in ("kafka", "redis"))):
        found += hits(Path(f"/proc/{pid}/cmdline").read_bytes(), f"the command line of {pid}")
    assert not found, found
