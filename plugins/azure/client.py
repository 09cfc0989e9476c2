"""The Azure test-step client: KServe v2 on the scoring URI with a bearer key or a token that
is refreshed before it expires and once after a 401. Imported only when a client is built."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from deployer.triton import EndpointError, KServeClient
from deployer.errors import DeployerError, Unavailable

from .spec import DEPLOYMENT_HEADER

#: a token is fetched again this close to its expiry (seconds; a quarter of its lifetime when
#: that is shorter)
REFRESH_MARGIN = 300.0
#: seconds since the epoch, the clock token expiries are read on (tests hand in their own)
CLOCK: Callable[[], float] = time.time


class _Auth:
    """The ``Authorization`` header from ``fetch`` (the seam's credential). A token is fetched
    again before a request within REFRESH_MARGIN of its expiry, and on demand after a 401; a
    key never is. Thread-safe (the load sender's threads share it); held in memory only."""

    def __init__(self, fetch: Callable[[], Any], clock: Callable[[], float] | None = None):
        self._fetch, self._lock = fetch, threading.Lock()
        self._clock = clock or CLOCK
        self.fetches = self.generation = 0
        self._use(fetch())  # a failure here is the deployer error the seam call raised

    def _renew(self) -> None:
        try:
            credential = self._fetch()
        except DeployerError as exc:  # mid-test, maybe in a load thread: an endpoint error
            raise EndpointError(f"fetching a new token: {exc}", kind="token") from None
        self._use(credential)

    def _use(self, credential) -> None:
        self._header = f"Bearer {credential.secret}"
        self._expires = credential.expires_on
        if credential.is_token:
            lifetime = max(0.0, credential.expires_on - self._clock())
            self._refresh_at = credential.expires_on - min(REFRESH_MARGIN, lifetime / 4)
        self.fetches += 1
        self.generation += 1

    def header(self) -> str:
        if self._expires is not None and self._clock() >= self._refresh_at:
            self.renew(self.generation)
        return self._header

    def renew(self, seen: int) -> bool:
        """Fetch a new token unless one came since generation ``seen``; False for a key."""
        if self._expires is None:
            return False
        with self._lock:
            if self.generation == seen:
                self._renew()
        return True


class AzureClient(KServeClient):
    """KServe v2 on the scoring URI; tokens are refreshed (see _Auth); a 401 says what to
    check."""

    def __init__(self, url: str, fetch: Callable[[], Any], deployment: str, endpoint: str,
                 clock: Callable[[], float] | None = None):
        self.auth = _Auth(fetch, clock)
        super().__init__(url, lambda: {"Authorization": self.auth.header(),
                                       DEPLOYMENT_HEADER: deployment})
        self._refused = (f"endpoint {endpoint} refused the credentials (HTTP 401): the key or "
                         "token is wrong, expired or regenerated, or auth_mode does not match")

    def _again_on_401(self, send: Callable[[], Any]) -> Any:
        """Send; on a 401 with a token, fetch a new one and send once more."""
        seen = self.auth.generation
        try:
            return send()
        except EndpointError as exc:
            if exc.kind != "http-401" or not self.auth.renew(seen):
                raise
        return send()

    def _call(self, what, fn):
        try:
            return self._again_on_401(lambda: super(AzureClient, self)._call(what, fn))
        except EndpointError as exc:
            if exc.kind == "http-401":
                raise EndpointError(f"{what}: {self._refused}", kind=exc.kind) from None
            raise

    def ready(self) -> bool:
        return self._again_on_401(super().ready)

    def sender(self, model, inputs, **route):
        send = super().sender(model, inputs, **route)  # headers taken per request
        return lambda: self._again_on_401(send)

    def probe(self) -> None:
        """Raise Unavailable at once on a 401 rather than waiting for a ready that never comes."""
        def ask() -> None:
            request = urllib.request.Request(self.url + "/v2/health/ready",
                                             headers=self.headers())
            try:
                with urllib.request.urlopen(request, timeout=10):
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    raise EndpointError(self._refused, kind="http-401") from None
            except (urllib.error.URLError, OSError):
                pass  # not up yet: the test step's ready check reports it

        try:
            self._again_on_401(ask)
        except EndpointError:
            raise Unavailable(self._refused, hint="for a cloud endpoint: az ml online-"
                              "endpoint get-credentials; then run the test again") from None


def connect(endpoint: dict, fetch: Callable[[], Any]) -> AzureClient:
    """The probed client of a recorded endpoint (``url``, ``endpoint``, ``deployment``), its
    credential from ``fetch``. KServe routes sit at the root of the scoring host; the scoring
    URI itself ends in /score."""
    import urllib.parse

    parsed = urllib.parse.urlparse(endpoint["url"])
    client = AzureClient(f"{parsed.scheme}://{parsed.netloc}", fetch, endpoint["deployment"],
                         endpoint["endpoint"])
    client.probe()
    return client
