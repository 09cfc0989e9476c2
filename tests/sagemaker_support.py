"""Test helpers for the SageMaker target: moto's server as the AWS control plane, and a
SageMaker runtime emulator that serves what moto's S3 holds with the real ``tritonserver``.

The emulator answers ``InvokeEndpoint`` (``POST /endpoints/<name>/invocations``) for endpoints
moto knows: it reads the endpoint → config → model chain from moto, downloads the artefact from
moto's S3, and runs it exactly like the rehearsal twin (``deployer_plugins.sagemaker.container``).
On a multi-model endpoint a TargetModel's first invocation answers ``ModelNotReadyException``
while it loads, as SageMaker does for a cold model. A background thread stops the server of an
endpoint moto no longer has.

Like SageMaker it publishes the endpoint's invocation metrics to CloudWatch (moto's, through
boto3's put_metric_data): see :class:`RuntimeEmulator`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from deployer import triton
from deployer_plugins.sagemaker import artefacts, container


ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
#: the trust policy an execution role needs: SageMaker may assume it
SAGEMAKER_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
    "Action": "sts:AssumeRole"}]}


@pytest.fixture(scope="session")
def moto_url():
    """moto's server on 127.0.0.1 (import this fixture into the test module)."""
    pytest.importorskip("moto.server", reason="moto[server] is needed for the SageMaker tests")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@contextlib.contextmanager
def aws_environment(url: str, runtime_url: str | None = None,
                    **extra: str) -> Iterator[dict[str, str]]:
    """Fake credentials and region, SageMaker, S3, IAM, CloudWatch (metrics and Logs),
    Application Auto Scaling and Service Quotas at ``url`` (moto, or a proxy in front of it), InvokeEndpoint at
    ``runtime_url``, ``extra`` variables, a fresh bucket, and :data:`ROLE` in moto's IAM,
    trusting SageMaker: yields ``{"bucket", "role"}``. A MonkeyPatch of its own: the contract
    suite calls ``monkeypatch.undo()`` mid-test."""
    import boto3

    with pytest.MonkeyPatch.context() as patch:
        for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN",
                    "AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
            patch.delenv(key, raising=False)
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_ENDPOINT_URL_SAGEMAKER": url, "AWS_ENDPOINT_URL_S3": url,
               "AWS_ENDPOINT_URL_IAM": url, "AWS_ENDPOINT_URL_CLOUDWATCH": url,
               # botocore derives these names from the service ids ("CloudWatch Logs",
               # "Application Auto Scaling", "Service Quotas")
               "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": url,
               "AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING": url,
               "AWS_ENDPOINT_URL_SERVICE_QUOTAS": url, **extra}
        if runtime_url:
            env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = runtime_url
        for key, value in env.items():
            patch.setenv(key, value)
        bucket = f"tdeploy-{uuid.uuid4().hex[:12]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        make_role(ROLE.rsplit("/", 1)[1], SAGEMAKER_TRUST)
        yield {"bucket": bucket, "role": ROLE}


def make_role(name: str, trust: dict, path: str = "/") -> str:
    """Create (or reset the trust policy of) IAM role ``name`` in moto; returns its ARN."""
    import boto3

    iam = boto3.client("iam")
    try:
        return iam.create_role(RoleName=name, Path=path,
                               AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
        return iam.get_role(RoleName=name)["Role"]["Arn"]


def _split(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


class _Endpoint:
    def __init__(self, root: Path, tag: str, multi: bool, info: dict, prefix: tuple[str, str],
                 variant: str = "AllTraffic"):
        self.root, self.tag, self.multi, self.info, self.prefix = root, tag, multi, info, prefix
        self.variant = variant
        self.loaded: set[str] = set()
        self.loading: dict[str, threading.Thread] = {}
        self.errors: dict[str, str] = {}
        self.lock = threading.Lock()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # the listen backlog (5 by default, read as the server starts listening): a load of
    # hundreds connecting at once would overflow it, and a dropped SYN comes back seconds later
    request_queue_size = 1024


class RuntimeEmulator:
    """``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` for tests. Uses boto3 with the process's env.
    What goes wrong in the emulator itself (not in what it serves) is kept in ``faults``;
    :meth:`close` fails when there is any.

    CloudWatch, as SageMaker: every invocation that reaches the container is measured and
    kept in ``records`` ({time, endpoint, variant, model_us, overhead_us}): ``ModelLatency``
    is the container's answer as the emulator sees it (the HTTP call to Triton),
    ``OverheadLatency`` the rest of the emulator's handling, from the request's headers read
    to the answer about to be written (less the start of the endpoint's server on its first
    request, which SageMaker does before InService). Each record becomes three datapoints (namespace
    ``AWS/SageMaker``, dimensions EndpointName and VariantName, timestamped with the request's
    arrival): ModelLatency and OverheadLatency in Microseconds, Invocations = 1 (Count).
    Requests answered before the container (unknown endpoint, a multi-model endpoint's cold
    model) are not recorded. Publishing is off the request path: a background thread sends
    what is pending every :attr:`EVERY` s, late as SageMaker is, and :meth:`flush` sends it
    all now (a test calls it before the target reads, e.g. through
    ``FaultProxy.before``). ``publishing = False`` holds new records back: CloudWatch has "not
    yet" the figures, until :meth:`release`. Records go to the CloudWatch endpoint (and region) the
    process's environment named when the request came.
    """

    EVERY = 0.5

    def __init__(self):
        self.work = Path(tempfile.mkdtemp(prefix="sm-runtime-"))
        self.endpoints: dict[str, _Endpoint] = {}
        self.lock = threading.Lock()
        self.invocations = 0
        self.not_ready_answers = 0
        self.faults: list[str] = []
        self.records: list[dict] = []
        self.publishing = True
        self._pending: list[dict] = []
        self._held: list[dict] = []
        self._records_lock = threading.Lock()
        self._send_lock = threading.Lock()   # one sender at a time, in order
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go in two writes: with Nagle, the body would wait for the
            # client's delayed ACK of the headers (40 ms), a delay no SageMaker endpoint has
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                arrived, began = time.time(), time.perf_counter()
                parts = self.path.split("?")[0].strip("/").split("/")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if len(parts) != 3 or parts[0] != "endpoints" or parts[2] != "invocations":
                    return self.reply(404, {"message": f"no route {self.path}"},
                                      error="UnknownOperationException")
                timing: dict = {}
                status, headers, answer = emulator.invoke(
                    urllib.parse.unquote(parts[1]),
                    self.headers.get("X-Amzn-SageMaker-Target-Model"), body,
                    self.headers.get("Content-Type", "application/json"), timing)
                if "model" in timing:
                    emulator.record(timing["endpoint"], arrived, timing["model"],
                                    time.perf_counter() - began - timing.get("startup", 0.0))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def reply(self, status, doc, error):
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("x-amzn-ErrorType", error)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        threading.Thread(target=self._reaper, daemon=True).start()
        threading.Thread(target=self._publisher, daemon=True).start()

    # -- AWS errors as botocore parses them (rest-json) ---------------------------------------
    @staticmethod
    def _error(status: int, code: str, message: str, **extra):
        return status, {"x-amzn-ErrorType": code, "Content-Type": "application/json"}, \
            json.dumps({"message": message, **extra}).encode()

    def _clients(self):
        import boto3

        return boto3.client("sagemaker"), boto3.client("s3")

    def _start(self, name: str) -> _Endpoint:
        sm, s3 = self._clients()
        described = sm.describe_endpoint(EndpointName=name)
        config = sm.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
        model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
        primary = model["PrimaryContainer"]
        env = dict(primary.get("Environment") or {})
        multi = primary.get("Mode") == "MultiModel"
        root = self.work / f"{name}-{uuid.uuid4().hex[:6]}"
        if multi:
            env["SAGEMAKER_MULTI_MODEL"] = "true"
            repo = root / "tmp-sagemaker"
            repo.mkdir(parents=True)
            prefix = _split(primary["ModelDataUrl"])
        else:
            repo = root / "opt-ml-model"
            repo.mkdir(parents=True)
            prefix = ("", "")
            if "ModelDataSource" in primary:
                bucket, key = _split(primary["ModelDataSource"]["S3DataSource"]["S3Uri"])
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=key):
                    for item in page.get("Contents", []):
                        target = repo / item["Key"][len(key):]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        s3.download_file(bucket, item["Key"], str(target))
            else:
                bucket, key = _split(primary["ModelDataUrl"])
                archive = root / "model.tar.gz"
                s3.download_file(bucket, key, str(archive))
                artefacts.unpack(archive, repo)
        args = container.serve_args(repo, env, multi)
        server = triton.find_server(None, create=True)
        tag = f"sm-runtime-{uuid.uuid4().hex}"
        info = container.start(server, args, env, root / "tritonserver.log", tag, 120,
                               lambda _: None)
        return _Endpoint(root, tag, multi, info, prefix,
                         config["ProductionVariants"][0]["VariantName"])

    def _load(self, endpoint: _Endpoint, target: str) -> None:
        try:
            _, s3 = self._clients()
            bucket, key = endpoint.prefix
            archive = endpoint.root / "downloads" / target
            archive.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key + target, str(archive))
            folder = container.mme_folder(endpoint.root / "opt-ml-models", target)
            artefacts.unpack(archive, folder)
            container.load(endpoint.info["sagemaker_port"], target, folder)
            with endpoint.lock:
                endpoint.loaded.add(target)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as a ModelError
            with endpoint.lock:
                endpoint.errors[target] = str(exc)

    def invoke(self, name: str, target: str | None, body: bytes, content_type: str,
               timing: dict | None = None):
        """``(status, headers, body)``; ``timing`` gets ``endpoint`` and ``model`` (seconds
        in the container's HTTP call) when the request reached the container, and
        ``startup`` (seconds starting the endpoint's server on its first request)."""
        timing = {} if timing is None else timing
        self.invocations += 1
        try:
            with self.lock:
                endpoint = self.endpoints.get(name)
                if endpoint is None:
                    starting = time.perf_counter()
                    try:
                        endpoint = self.endpoints[name] = self._start(name)
                    except Exception as exc:  # noqa: BLE001
                        if "Could not find endpoint" in str(exc):
                            return self._error(400, "ValidationError",
                                               f"Endpoint {name} not found.")
                        return self._error(424, "ModelError", "the container failed",
                                           OriginalStatusCode=500, OriginalMessage=str(exc))
                    # SageMaker's container runs before the endpoint is InService: this
                    # start is the emulator's, no overhead of a request
                    timing["startup"] = time.perf_counter() - starting
            headers = {"Content-Type": content_type}
            port = endpoint.info["sagemaker_port"]
            if endpoint.multi:
                if not target:
                    return self._error(400, "ValidationError",
                                       "TargetModel is required for a multi-model endpoint")
                with endpoint.lock:
                    if target in endpoint.errors:
                        return self._error(424, "ModelError", "load failed",
                                           OriginalStatusCode=400,
                                           OriginalMessage=endpoint.errors[target])
                    if target not in endpoint.loaded:
                        if target not in endpoint.loading:
                            thread = threading.Thread(target=self._load, args=(endpoint, target),
                                                      daemon=True)
                            endpoint.loading[target] = thread
                            thread.start()
                        self.not_ready_answers += 1
                        return self._error(429, "ModelNotReadyException",
                                           f"Model {target} is loading")
                url = f"http://127.0.0.1:{port}/models/{urllib.parse.quote(target)}/invoke"
                headers[container.TARGET_HEADER] = target
            else:
                url = f"http://127.0.0.1:{port}/invocations"
            called = time.perf_counter()
            status, answer_headers, answer = container.request("POST", url, body, headers)
            timing.update(endpoint=(name, endpoint.variant), model=time.perf_counter() - called)
            if status != 200:
                return self._error(424, "ModelError", "Received client error from primary "
                                   "container", OriginalStatusCode=status,
                                   OriginalMessage=answer.decode("utf-8", "replace"))
            return 200, {"Content-Type": answer_headers.get("Content-Type",
                                                            "application/json")}, answer
        except Exception as exc:  # noqa: BLE001 - a bug here fails the test (close)
            self.faults.append(f"invoke {name}: {exc!r}")
            return self._error(500, "InternalFailure", f"emulator: {exc}")

    # -- CloudWatch, as SageMaker publishes it ----------------------------------------------
    def record(self, endpoint: tuple[str, str], arrived: float, model: float,
               total: float) -> None:
        """Keep one invocation's measures; pending for CloudWatch when publishing."""
        entry = {"time": arrived, "endpoint": endpoint[0], "variant": endpoint[1],
                 "model_us": round(model * 1e6, 1),
                 "overhead_us": round(max(0.0, total - model) * 1e6, 1),
                 "cloudwatch": os.environ.get("AWS_ENDPOINT_URL_CLOUDWATCH"),
                 "region": os.environ.get("AWS_REGION", "us-east-1")}
        with self._records_lock:
            self.records.append(entry)
            (self._pending if self.publishing else self._held).append(entry)

    def release(self) -> None:
        """Publishing on again, and what was held while it was off pending: CloudWatch gets
        those figures late, at the next flush."""
        with self._records_lock:
            self.publishing = True
            self._pending += self._held
            self._held = []

    def in_window(self, endpoint: str, first: float, last: float) -> list[dict]:
        """The records of ``endpoint`` whose time is in ``[first, last)``."""
        with self._records_lock:
            return [r for r in self.records
                    if r["endpoint"] == endpoint and first <= r["time"] < last]

    def flush(self) -> None:
        """Publish everything pending now (to moto: put_metric_data); returns once sent."""
        import boto3

        with self._send_lock:
            with self._records_lock:
                pending, self._pending = self._pending, []
            for entry in [e for e in pending if not e["cloudwatch"]]:
                self.faults.append(f"no CloudWatch endpoint to publish {entry} to")
            groups: dict[tuple[str, str], list[dict]] = {}
            for entry in pending:
                if entry["cloudwatch"]:
                    groups.setdefault((entry["cloudwatch"], entry["region"]), []).append(entry)
            for (url, region), entries in groups.items():
                client = boto3.client("cloudwatch", endpoint_url=url, region_name=region,
                                      aws_access_key_id="testing",
                                      aws_secret_access_key="testing")
                data = [datum for entry in entries for datum in self._datapoints(entry)]
                for at in range(0, len(data), 300):
                    client.put_metric_data(Namespace="AWS/SageMaker",
                                           MetricData=data[at:at + 300])

    @staticmethod
    def _datapoints(entry: dict) -> list[dict]:
        dimensions = [{"Name": "EndpointName", "Value": entry["endpoint"]},
                      {"Name": "VariantName", "Value": entry["variant"]}]
        stamp = datetime.datetime.fromtimestamp(entry["time"], datetime.timezone.utc)
        return [{"MetricName": name, "Dimensions": dimensions, "Timestamp": stamp,
                 "Value": value, "Unit": unit} for name, value, unit in (
                    ("ModelLatency", entry["model_us"], "Microseconds"),
                    ("OverheadLatency", entry["overhead_us"], "Microseconds"),
                    ("Invocations", 1.0, "Count"))]

    def _publisher(self) -> None:
        while not self._stop.wait(self.EVERY):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - kept for close()
                self.faults.append(f"publishing metrics: {exc!r}")

    def _reaper(self) -> None:
        while not self._stop.wait(1.0):
            for name in list(self.endpoints):
                try:
                    sm, _ = self._clients()
                    sm.describe_endpoint(EndpointName=name)
                except Exception as exc:  # noqa: BLE001
                    if "Could not find endpoint" not in str(exc):
                        self.faults.append(f"reaper, describing {name}: {exc!r}")
                        continue
                    try:
                        self._drop(name)
                    except Exception as exc:  # noqa: BLE001 - kept for close()
                        self.faults.append(f"reaper, stopping {name}: {exc!r}")

    def _drop(self, name: str) -> None:
        with self.lock:
            endpoint = self.endpoints.pop(name, None)
        if endpoint:
            triton.stop(endpoint.tag, grace=5)
            shutil.rmtree(endpoint.root, ignore_errors=True)

    def running(self) -> list[str]:
        return list(self.endpoints)

    def close(self) -> None:
        self._stop.set()
        for name in list(self.endpoints):
            self._drop(name)
        self.httpd.shutdown()
        shutil.rmtree(self.work, ignore_errors=True)
        assert not self.faults, f"the runtime emulator failed: {self.faults}"


def leftovers(bucket: str) -> dict[str, list[str]]:
    """What moto still holds: endpoints, configs, models and objects in ``bucket``."""
    import boto3

    sm, s3 = boto3.client("sagemaker"), boto3.client("s3")
    objects = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {"endpoints": [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]],
            "configs": [c["EndpointConfigName"] for c in
                        sm.list_endpoint_configs()["EndpointConfigs"]],
            "models": [m["ModelName"] for m in sm.list_models()["Models"]],
            "objects": objects}
