"""Several Triton endpoints serving one model repository, used as one.

``TRITON_URL`` may name several Tritons, comma-separated (``host:port,host:port``). A
scorer spreads its requests over the endpoints that are up, in turn. An endpoint whose
request or health probe fails rests: no request is sent to it while another endpoint is
up, and it is probed again after a pause that doubles while it keeps failing, and taken
back as soon as a probe (or a request) succeeds. When every endpoint rests, the one due
first still takes the request: a request is never dropped for want of a healthy
endpoint, and one endpoint behaves as a single Triton always did.

This module is the choice alone, on a clock it is given, so that it can be tested
without a service; :class:`streams.dataplane.scoring.TritonScorer` makes the calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import urlsplit


def triton_urls(value: str) -> list[str]:
    """The endpoints of a ``TRITON_URL`` value: one URL, or several comma-separated."""
    urls = [part.strip() for part in value.split(",") if part.strip()]
    if not urls:
        raise ValueError(f"no Triton endpoint in {value!r}")
    if len(set(urls)) != len(urls):
        raise ValueError(f"a Triton endpoint is named twice in {value!r}")
    return urls


def endpoint_label(url: str) -> str:
    """``host:port`` of an endpoint, as it may be logged or exported as a metric label
    (no scheme, credential or path)."""
    parsed = urlsplit(url if "//" in url else f"//{url}")
    host = parsed.hostname or url
    try:
        port = parsed.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


@dataclass
class Endpoint:
    """What the pool knows of one endpoint."""

    url: str
    label: str
    up: bool = True
    next_probe: float = 0.0
    pause_s: float = 0.0
    failures: int = 0
    """Consecutive failures (requests and probes) since it last answered."""
    failed_at: float = 0.0


class EndpointPool:
    """Which endpoint takes the next attempt of a request; see the module docstring.

    Parameters
    ----------
    urls
        The endpoints, in the order they take requests.
    first_pause_s, max_pause_s
        A resting endpoint is probed again ``first_pause_s`` after its first failure,
        the pause doubling with each failure after it up to ``max_pause_s``.
    clock
        Seconds, monotonic (a test gives its own).
    """

    def __init__(self, urls: list[str], *, first_pause_s: float = 0.25,
                 max_pause_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError("the pool needs at least one endpoint")
        self.endpoints = [Endpoint(url, endpoint_label(url), pause_s=first_pause_s)
                          for url in urls]
        self.first_pause_s, self.max_pause_s = first_pause_s, max_pause_s
        self.clock = clock
        self._turn = 0

    def pick(self, tried: Collection[str] = ()) -> Endpoint | None:
        """The endpoint for the next attempt of a request that already failed on the
        endpoints ``tried`` (URLs) since it last waited.

        The endpoints that are up take turns. When none is up and the request has not
        tried any endpoint yet, the resting endpoint due first takes it (the request
        waited its own backoff before coming back). ``None``: every endpoint worth
        trying now was tried; the caller waits its backoff, then asks again with an
        empty ``tried``.
        """
        count = len(self.endpoints)
        for step in range(count):
            endpoint = self.endpoints[(self._turn + step) % count]
            if endpoint.up and endpoint.url not in tried:
                self._turn = (self._turn + step + 1) % count
                return endpoint
        if tried:
            return None
        return min(self.endpoints, key=lambda e: e.next_probe)

    def succeeded(self, endpoint: Endpoint, sent_at: float | None = None) -> bool:
        """A request or probe on ``endpoint``, sent at ``sent_at`` (the pool's clock),
        succeeded; whether it was resting and is up again. A request sent before the
        endpoint's last failure proves nothing about it now and changes nothing."""
        if not endpoint.up and sent_at is not None and sent_at < endpoint.failed_at:
            return False
        was_resting = not endpoint.up
        endpoint.up, endpoint.failures = True, 0
        endpoint.pause_s, endpoint.next_probe = self.first_pause_s, 0.0
        return was_resting

    def failed(self, endpoint: Endpoint) -> bool:
        """A request or probe on ``endpoint`` failed: it rests until its next probe;
        whether it was up."""
        was_up = endpoint.up
        now = self.clock()
        endpoint.failures += 1
        endpoint.failed_at = now
        if was_up or now >= endpoint.next_probe:
            endpoint.next_probe = now + endpoint.pause_s
            endpoint.pause_s = min(endpoint.pause_s * 2, self.max_pause_s)
        endpoint.up = False
        return was_up

    def due(self) -> list[Endpoint]:
        """The resting endpoints whose next probe is due now."""
        now = self.clock()
        return [e for e in self.endpoints if not e.up and now >= e.next_probe]

    def up_endpoints(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.up]
