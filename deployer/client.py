"""How the test step talks to a deployment, whatever the target.

``EndpointClient`` is the interface; ``KServeClient`` speaks KServe v2 over HTTP with
``tritonclient.http`` (local, docker, and any Triton behind TLS and headers).
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import numpy as np


class EndpointError(Exception):
    """A request to the deployment failed; ``kind`` groups errors in load results."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind


class EndpointClient:
    """One interface for the test step across targets."""

    def ready(self) -> bool:
        """Whether the server answers ready (never raises for a refused connection)."""
        raise NotImplementedError

    def metadata(self, model: str) -> dict[str, Any]:
        """KServe v2 model metadata: ``{"name", "versions", "platform", "inputs": [{"name",
        "datatype", "shape"}], "outputs": [...]}``. Raises EndpointError."""
        raise NotImplementedError

    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference; return every output as a numpy array. Raises EndpointError."""
        raise NotImplementedError

    def sender(self, model: str, inputs: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """A function that sends the same request again, for load; thread-safe, raises
        EndpointError. The default calls ``infer``; clients override it to encode once."""
        return lambda: self.infer(model, inputs)

    def close(self) -> None:
        pass


def _datatype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


class KServeClient(EndpointClient):
    """KServe v2 over HTTP(S). ``headers`` go on every request (auth, routing)."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, timeout: float = 60.0):
        import tritonclient.http as httpclient

        parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
        self.url = parsed.geturl().rstrip("/")
        self._ssl = parsed.scheme == "https"
        self._netloc = parsed.netloc
        self._prefix = parsed.path.rstrip("/")
        self._headers = dict(headers or {})
        self._timeout = timeout
        self._httpclient = httpclient
        self._client = httpclient.InferenceServerClient(
            url=self._netloc + self._prefix, ssl=self._ssl, connection_timeout=timeout,
            network_timeout=timeout)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn()
        except InferenceServerException as exc:
            status = exc.status() or "error"
            raise EndpointError(f"{what}: {exc.message() or exc}", kind=f"http-{status}"
                                if str(status).isdigit() else str(status)) from None
        except (ConnectionError, OSError) as exc:
            raise EndpointError(f"{what}: {exc}", kind="connection") from None

    def ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready(headers=self._headers))
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    def metadata(self, model: str) -> dict[str, Any]:
        return self._call(f"metadata of {model}",
                          lambda: self._client.get_model_metadata(model, headers=self._headers))

    def _inputs(self, inputs: Mapping[str, np.ndarray]) -> list:
        built = []
        for name, array in inputs.items():
            item = self._httpclient.InferInput(name, list(array.shape), _datatype(array))
            item.set_data_from_numpy(array, binary_data=True)
            built.append(item)
        return built

    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._call(f"inference on {model}", lambda: self._client.infer(
            model, self._inputs(inputs), headers=self._headers))
        response = result.get_response()
        return {out["name"]: result.as_numpy(out["name"]) for out in response.get("outputs", [])}

    def sender(self, model: str, inputs: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """Encode the request once; each thread keeps its own persistent connection."""
        body, json_size = self._httpclient.InferenceServerClient.generate_request_body(
            self._inputs(inputs))
        headers = {**self._headers, "Content-Type": "application/octet-stream",
                   "Content-Length": str(len(body))}
        if json_size is not None:
            headers["Inference-Header-Content-Length"] = str(json_size)
        path = f"{self._prefix}/v2/models/{urllib.parse.quote(model)}/infer"
        local = threading.local()
        factory = http.client.HTTPSConnection if self._ssl else http.client.HTTPConnection

        def send() -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = factory(self._netloc, timeout=self._timeout)
            try:
                conn.request("POST", path, body=body, headers=headers)
                answer = conn.getresponse()
                payload = answer.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                local.conn = None
                raise EndpointError(str(exc), kind="connection") from None
            if answer.status != 200:
                raise EndpointError(payload[:200].decode("utf-8", "replace"),
                                    kind=f"http-{answer.status}")

        return send

    def close(self) -> None:
        self._client.close()
