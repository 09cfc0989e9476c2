"""Talking to a SageMaker Triton endpoint: binary+JSON bodies, InvokeEndpoint, and the twin.

Both clients send the body Triton's SageMaker frontend reads:
``application/vnd.sagemaker-triton.binary+json;json-header-size=N`` (a KServe v2 JSON header,
then the raw tensors), built and parsed by ``tritonclient.http``.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any, Mapping

from deployer.triton import EndpointClient, EndpointError, HttpRequest

#: InvokeEndpoint's request limit
MAX_BODY = 6_291_456
BINARY_TYPE = "application/vnd.sagemaker-triton.binary+json;json-header-size="
#: ModelNotReadyException: a cold multi-model TargetModel can take up to 360 s to load
NOT_READY_DEADLINE = 360.0
#: InvokeEndpoint's header naming a multi-model endpoint's TargetModel
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
#: seconds a load keeps one SigV4 signature: AWS refuses a request that reaches it more than
#: five minutes after the signature's X-Amz-Date (IAM User Guide, "Elements of an AWS API
#: request signature")
SIGNATURE_REFRESH = 60.0


def encode(model, inputs: Mapping[str, Any],
           sequence: Mapping[str, Any] | None = None) -> tuple[bytes, str]:
    """The request body and its Content-Type; refuses a body InvokeEndpoint would reject.
    ``sequence``: a stateful model's correlation id and flags, as KServe v2 parameters of
    the JSON header (the SageMaker frontend parses the header as the infer route does)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    built = []
    for name, array in inputs.items():
        item = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        item.set_data_from_numpy(array, binary_data=True)
        built.append(item)
    outputs = [httpclient.InferRequestedOutput(spec.name, binary_data=True)
               for spec in model.outputs]
    sequence = sequence or {}
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        built, outputs, sequence_id=sequence.get("sequence_id", 0),
        sequence_start=bool(sequence.get("sequence_start")),
        sequence_end=bool(sequence.get("sequence_end")))
    if len(body) > MAX_BODY:
        raise EndpointError(
            f"request body for {model.name} is {len(body):,} bytes; SageMaker InvokeEndpoint "
            f"accepts at most {MAX_BODY:,} (6 MB): send a smaller batch or sample",
            kind="payload-too-large")
    content_type = "application/json" if json_size is None else f"{BINARY_TYPE}{json_size}"
    return bytes(body), content_type


def decode(body: bytes, content_type: str | None) -> dict[str, Any]:
    import tritonclient.http as httpclient

    header_length = None
    if content_type and content_type.startswith(BINARY_TYPE):
        header_length = int(content_type[len(BINARY_TYPE):])
    try:
        result = httpclient.InferenceServerClient.parse_response_body(
            body, header_length=header_length)
    except Exception as exc:  # noqa: BLE001 - a malformed answer is the endpoint's failure
        raise EndpointError(f"unreadable answer ({content_type}): {exc}", kind="bad-answer") \
            from None
    return {out["name"]: result.as_numpy(out["name"])
            for out in result.get_response().get("outputs", [])}


class _InvokeClient(EndpointClient):
    """Both clients send the same binary+JSON body; only ``_invoke`` differs."""

    repository: Any
    # /invocations names no version: the endpoint answers with the one Triton serves
    passes_sequences = True

    def _invoke(self, model: str, body: bytes, content_type: str) -> dict[str, Any]:
        raise NotImplementedError

    def infer(self, model, inputs, *, sequence=None):
        body, content_type = encode(self.repository.models[model], inputs, sequence)
        return self._invoke(model, body, content_type)

    def sender(self, model, inputs):
        body, content_type = encode(self.repository.models[model], inputs)
        return lambda: self._invoke(model, body, content_type) and None


class SageMakerClient(_InvokeClient):
    """InvokeEndpoint through ``sagemaker-runtime``; ``TargetModel`` on a multi-model endpoint."""

    # InvokeEndpoint reaches /invocations (or /models/<m>/invoke) only: Triton's metadata
    # route is not exposed. The test step skips its metadata check and compares the outputs
    # of each inference with the config; the twin checks the real metadata of the same bytes.
    serves_metadata = False
    no_metadata = "SageMaker has no metadata route (InvokeEndpoint only)"

    def __init__(self, session, endpoint: str, repository, multi: bool, progress=lambda _: None):
        from botocore.config import Config

        self.endpoint = endpoint
        self.repository = repository
        self.multi = multi
        self.progress = progress
        self._session = session
        config = Config(read_timeout=70, retries={"max_attempts": 2, "mode": "standard"})
        self._runtime = session.client("sagemaker-runtime", config=config)
        self._control = session.client("sagemaker")

    def ready(self) -> bool:
        """SageMaker has no public ping: ready means the endpoint is InService."""
        try:
            status = self._control.describe_endpoint(EndpointName=self.endpoint)
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        return status.get("EndpointStatus") == "InService"

    def metadata(self, model: str) -> dict[str, Any]:
        raise EndpointError(f"metadata of {model}: {self.no_metadata}", kind="unsupported")

    def load_request(self, model: str, inputs: Mapping[str, Any]) -> HttpRequest:
        """InvokeEndpoint as plain HTTP: the runtime client's endpoint URL (which honours
        ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``), the body and headers ``invoke_endpoint``
        sends, and a SigV4 signature from botocore's own signer (on the session's credentials,
        refreshed when they expire), made again every :data:`SIGNATURE_REFRESH` s."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        body, content_type = encode(self.repository.models[model], inputs)
        meta = self._runtime.meta
        url = (f"{meta.endpoint_url.rstrip('/')}/endpoints/"
               f"{urllib.parse.quote(self.endpoint, safe='')}/invocations")
        headers = {"Content-Type": content_type}
        if self.multi:
            headers[TARGET_MODEL_HEADER] = f"{model}.tar.gz"
        credentials = self._session.get_credentials()
        if credentials is None:
            raise EndpointError("no AWS credentials to sign InvokeEndpoint with",
                                kind="credentials")
        signing = (meta.service_model.signing_name, meta.region_name)

        def sign() -> dict[str, str]:
            request = AWSRequest("POST", url, data=body, headers=headers)
            SigV4Auth(credentials.get_frozen_credentials(), *signing).add_auth(request)
            return {k: v for k, v in request.headers.items() if k not in headers}

        return HttpRequest(url, body, headers, fresh=sign, refresh=SIGNATURE_REFRESH,
                           error_header="x-amzn-ErrorType")

    def _invoke(self, model: str, body: bytes, content_type: str) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        from . import aws

        kwargs = {"EndpointName": self.endpoint, "Body": body, "ContentType": content_type}
        if self.multi:
            kwargs["TargetModel"] = f"{model}.tar.gz"
        deadline = time.monotonic() + NOT_READY_DEADLINE
        delay = 0.5
        while True:
            try:
                answer = self._runtime.invoke_endpoint(**kwargs)
                return decode(answer["Body"].read(), answer.get("ContentType"))
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "error")
                if code == "ModelNotReadyException" and time.monotonic() < deadline:
                    self.progress(f"  {kwargs.get('TargetModel', model)} is loading; retrying "
                                  f"in {delay:.1f}s")
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                original = exc.response.get("OriginalMessage")
                if original:  # the container's own answer (ModelError)
                    raise EndpointError(f"inference on {model}: {code}: {original}",
                                        kind=code) from None
                line, hint = aws.explain(exc, aws.Facts())
                raise EndpointError(f"inference on {model}: {line}"
                                    + (f" ({hint})" if hint else ""), kind=code) from None
            except BotoCoreError as exc:
                line, hint = aws.explain(exc, aws.Facts())
                raise EndpointError(f"inference on {model}: {line}"
                                    + (f" ({hint})" if hint else ""), kind="connection") \
                    from None


class TwinClient(_InvokeClient):
    """The same bodies, straight to Triton's SageMaker frontend of the twin."""

    def __init__(self, endpoint: Mapping[str, Any], repository):
        self.base = f"http://127.0.0.1:{endpoint['sagemaker_port']}"
        self.http = f"http://127.0.0.1:{endpoint['http_port']}"
        self.multi = endpoint.get("mode") == "multi"
        self.repository = repository

    def _served(self, model: str) -> str:
        return f"{model}.tar.gz" if self.multi else model

    def ready(self) -> bool:
        from .container import request

        try:
            return request("GET", f"{self.base}/ping", timeout=5)[0] == 200
        except OSError:
            return False

    def metadata(self, model: str) -> dict[str, Any]:
        """Real metadata, from the twin's HTTP port (bound to 127.0.0.1; see container.command).
        On a multi-model endpoint Triton names the model after its TargetModel
        (``<model>.tar.gz``): the name is mapped back to the repository's."""
        from .container import request

        served = self._served(model)
        try:
            status, _, body = request(
                "GET", f"{self.http}/v2/models/{urllib.parse.quote(served)}", timeout=30)
        except OSError as exc:
            raise EndpointError(f"metadata of {model}: {exc}", kind="connection") from None
        if status != 200:
            raise EndpointError(f"metadata of {model}: HTTP {status}: "
                                f"{body[:200].decode('utf-8', 'replace')}", kind=f"http-{status}")
        meta = json.loads(body)
        if meta.get("name") == served:
            meta["name"] = model
        return meta

    def _address(self, model: str, content_type: str) -> tuple[str, dict[str, str]]:
        """The URL and headers of an invocation: a multi-model endpoint's model route."""
        from .container import TARGET_HEADER

        headers = {"Content-Type": content_type}
        if not self.multi:
            return f"{self.base}/invocations", headers
        served = self._served(model)
        headers[TARGET_HEADER] = served
        return f"{self.base}/models/{urllib.parse.quote(served)}/invoke", headers

    def load_request(self, model: str, inputs: Mapping[str, Any]) -> HttpRequest:
        """The twin's invocation as plain HTTP (it asks no credential)."""
        body, content_type = encode(self.repository.models[model], inputs)
        url, headers = self._address(model, content_type)
        return HttpRequest(url, body, headers)

    def _invoke(self, model: str, body: bytes, content_type: str) -> dict[str, Any]:
        from .container import request

        url, headers = self._address(model, content_type)
        try:
            status, answer_headers, answer = request("POST", url, body, headers)
        except OSError as exc:
            raise EndpointError(f"inference on {model}: {exc}", kind="connection") from None
        if status != 200:
            raise EndpointError(f"inference on {model}: HTTP {status}: "
                                f"{answer[:300].decode('utf-8', 'replace')}",
                                kind=f"http-{status}")
        return decode(answer, answer_headers.get("Content-Type"))
