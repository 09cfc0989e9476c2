"""The Azure test-step client: KServe v2 on the scoring URI with a bearer key or a token that
is refreshed before it expires and once after a 401. Imported only when a client is built."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any, Callable

from deployer.triton import BearerAuth
from deployer.errors import Unavailable
from deployer.triton import EndpointError, HttpRequest, KServeClient

from .spec import DEPLOYMENT_HEADER

#: a token is fetched again this close to its expiry (seconds; a quarter of its lifetime when
#: that is shorter)
REFRESH_MARGIN = 300.0
#: seconds since the epoch, the clock token expiries are read on (tests hand in their own)
CLOCK: Callable[[], float] = time.time
#: seconds between two reads of the headers during a load (a token is renewed REFRESH_MARGIN
#: before its expiry)
LOAD_REFRESH = 30.0


class AzureClient(KServeClient):
    """KServe v2 on the scoring URI; tokens are refreshed (deployer.triton.BearerAuth, on
    this module's CLOCK and REFRESH_MARGIN); a 401 says what to check."""

    def __init__(self, url: str, fetch: Callable[[], Any], deployment: str, endpoint: str,
                 clock: Callable[[], float] | None = None):
        self.auth = BearerAuth(fetch, clock or CLOCK, REFRESH_MARGIN)
        super().__init__(url, lambda: {"Authorization": self.auth.header(),
                                       DEPLOYMENT_HEADER: deployment})
        self._refused = (f"endpoint {endpoint} refused the credentials (HTTP 401): the key or "
                         "token is wrong, expired or regenerated, or auth_mode does not match")

    def _again_on_401(self, send: Callable[[], Any]) -> Any:
        """Send; on a 401 with a token, fetch a new one and send once more."""
        return self.auth.again_on_401(send)

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

    def load_request(self, model, inputs, **route) -> HttpRequest:
        """KServe's request; its headers (the credential and the deployment) read again every
        :data:`LOAD_REFRESH` s; after a 401, the next read fetches a new token (a key is
        never fetched again)."""
        request = super().load_request(model, inputs, **route)
        handed, refused = [self.auth.generation], []

        def fresh():
            if refused:
                refused.clear()
                self.auth.renew(handed[0])  # once, however many requests met the 401
            headers = self.headers()
            handed[0] = self.auth.generation
            return headers

        request.fresh, request.refresh = fresh, LOAD_REFRESH
        request.refused = lambda: refused.append(True)
        return request

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
