"""The AWS control plane calls the target makes (boto3, imported here only), and the funnel
every failed call ends in: one line with the operation, AWS's error code and message, and a hint
for the codes a real account returns first."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import re
import types
from typing import Iterator

TAG_KEY = "triton-deployer:deployment-id"
NAME_TAG = "triton-deployer:name"
NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404", "ResourceNotFound",
                   "ResourceNotFoundException", "NoSuchBucket",
                   # Application Auto Scaling: no such scalable target or policy
                   "ObjectNotFoundException"}
THROTTLING_CODES = {"ThrottlingException", "Throttling", "ThrottledException",
                    "TooManyRequestsException", "RequestLimitExceeded", "SlowDown",
                    "RequestThrottled", "RequestThrottledException"}
#: S3 answers a request for a bucket of another region with one of these (and the region)
REGION_CODES = {"PermanentRedirect", "301", "AuthorizationHeaderMalformed",
                "IllegalLocationConstraintException"}
CREDENTIAL_CODES = {"ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId",
                    "UnrecognizedClientException", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch", "InvalidToken"}
#: HeadBucket's answers carry no body: botocore's code is the HTTP status; name it as S3 would
HEAD_CODES = {"404": ("NoSuchBucket", "The specified bucket does not exist"),
              "403": ("AccessDenied", "Forbidden"),
              "301": ("PermanentRedirect", "the bucket is in another region"),
              "400": ("BadRequest", "Bad Request")}


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the hints name: the settings of the deploy or teardown whose call failed."""

    region: str | None = None
    bucket: str | None = None
    role: str | None = None
    instance_type: str | None = None


def is_cloud_error(exc: BaseException) -> bool:
    """A botocore or boto3 exception (a ClientError, a transport error, S3UploadFailedError)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, (BotoCoreError, ClientError, Boto3Error))


def _client_error(exc: BaseException | None):
    """The ClientError behind ``exc``: boto3 raises S3UploadFailedError inside its handler."""
    from botocore.exceptions import ClientError

    while exc is not None:
        if isinstance(exc, ClientError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def bucket_region(response: dict) -> str | None:
    """The region S3 says a bucket is in: the ``x-amz-bucket-region`` header, the error's
    ``Region``, or the regional ``Endpoint`` of a PermanentRedirect."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    error = response.get("Error", {})
    if headers.get("x-amz-bucket-region"):
        return headers["x-amz-bucket-region"]
    if error.get("Region"):
        return error["Region"]
    match = re.search(r"\.s3[.-]([a-z]{2}(?:-[a-z]+)+-\d)\.amazonaws\.com",
                      str(error.get("Endpoint", "")))
    return match.group(1) if match else None


def explain(exc: BaseException, facts: Facts) -> tuple[str, str | None]:
    """``(line, hint)`` for a failed AWS call: the operation, AWS's code and message, and what
    to do for the codes a real account returns first."""
    from botocore.exceptions import (ConnectionError, EndpointConnectionError, NoCredentialsError,
                                     NoRegionError, ReadTimeoutError)

    error = _client_error(exc)
    if error is None:
        text = _one_line(str(exc))
        if isinstance(exc, NoCredentialsError):
            return f"AWS: {text}", ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                                    "AWS_PROFILE, or run 'aws configure' / 'aws sso login'")
        if isinstance(exc, (EndpointConnectionError, ConnectionError, ReadTimeoutError)):
            return f"cannot reach AWS: {text}", (
                f"check the network and the region ({facts.region}), and any HTTPS_PROXY or "
                "AWS_ENDPOINT_URL* setting; then retry")
        if isinstance(exc, NoRegionError):
            return f"AWS: {text}", "pass -o region=us-east-1, or set AWS_REGION"
        return f"AWS: {type(exc).__name__}: {text}", None
    operation = getattr(error, "operation_name", None) or "an AWS call"
    response = error.response
    code = str(response.get("Error", {}).get("Code") or "")
    message = _one_line(response.get("Error", {}).get("Message") or "")
    if operation == "HeadBucket" and code in HEAD_CODES:
        code, message = HEAD_CODES[code]
    line = f"{operation} failed: {code}: {message}" if code else f"{operation} failed: {message}"
    return line, _hint(code, message, response, facts)


def _hint(code: str, message: str, response: dict, facts: Facts) -> str | None:
    region, bucket, role = facts.region or "REGION", facts.bucket or "BUCKET", facts.role
    if code == "ResourceLimitExceeded":
        quoted = re.search(r"service limit '([^']+)'", message)
        quota = quoted.group(1) if quoted else f"{facts.instance_type} for endpoint usage"
        return (f"raise the quota '{quota}' in the Service Quotas console (AWS services → "
                f"Amazon SageMaker, region {region}); new accounts start at 0 for GPU "
                "instances. Or pass -o instance_type= a type you have quota for")
    if code in ("AccessDeniedException", "AccessDenied", "ValidationException") and \
            "service-linked role" in message.lower():
        return ("Application Auto Scaling creates the role AWSServiceRoleForApplicationAutoScaling_"
                "SageMakerEndpoint on first use: the caller needs iam:CreateServiceLinkedRole "
                "(for sagemaker.application-autoscaling.amazonaws.com)")
    if code in ("AccessDeniedException", "AccessDenied"):
        if "iam:PassRole" in message:
            caller = re.search(r"User: (\S+) is not authorized", message)
            who = f"the caller {caller.group(1)}" if caller else "the caller"
            on = re.search(r"on resource: (\S+)", message)
            target = on.group(1).rstrip(".") if on else (role or "the execution role")
            return (f"{who} needs iam:PassRole on {target} (an IAM policy statement: Action "
                    f"iam:PassRole, Resource {target}), or pass -o role= a role it may pass")
        action = re.search(r"perform: (\S+)", message)
        if action:
            return f"grant the caller {action.group(1)} (in its IAM policy)"
        return "check the caller's IAM permissions (aws sts get-caller-identity says who it is)"
    if code == "NoSuchBucket":
        return (f"create it: aws s3 mb s3://{bucket} --region {region}, or pass -o bucket= an "
                "existing bucket")
    if code in REGION_CODES:
        where = bucket_region(response)
        if where:
            return (f"bucket {bucket} is in {where}: pass -o region={where}, or use a bucket in "
                    f"{region}")
        return (f"bucket {bucket} is in another region (aws s3api get-bucket-location --bucket "
                f"{bucket}): pass -o region= that region")
    if code in THROTTLING_CODES:
        attempts = int(response.get("ResponseMetadata", {}).get("RetryAttempts") or 0) + 1
        return (f"AWS still throttled after {attempts} attempt(s): retry in a minute, or let "
                "botocore retry longer (AWS_MAX_ATTEMPTS=10 AWS_RETRY_MODE=adaptive)")
    if code == "ValidationException":
        if "model data" in message:
            return (f"SageMaker reads the artefacts as the execution role {role}: the object "
                    f"must exist, in a bucket in {region}, and the role needs s3:GetObject on "
                    "it (and kms:Decrypt if the bucket is encrypted with a KMS key)")
        if "in-progress" in message or "in progress" in message:
            return ("the endpoint is still being created or updated: wait until it is InService "
                    "or Failed (aws sagemaker wait endpoint-in-service --endpoint-name NAME)")
        if "assume" in message.lower() and "role" in message.lower():
            return (f"the trust policy of {role} must let sagemaker.amazonaws.com call "
                    "sts:AssumeRole")
    if code in CREDENTIAL_CODES:
        return "refresh the AWS credentials ('aws sso login', or new access keys) and retry"
    return None


def unreachable(exc: BaseException) -> bool:
    """AWS could not be reached at all (no HTTP answer)."""
    from botocore.exceptions import ConnectionError, EndpointConnectionError, ReadTimeoutError

    return isinstance(exc, (EndpointConnectionError, ConnectionError, ReadTimeoutError))


@contextlib.contextmanager
def failures(error, facts: Facts, *, then=None) -> Iterator[None]:
    """Turn any botocore/boto3 exception raised inside into ``error`` (a DeployerError class)
    with the one line of :func:`explain`; ``then`` (text, or a function returning it when the
    error happens) is appended to the hint: what to run next. Before anything is created
    (``error`` is a UsageError) an unreachable AWS is exit 5."""
    try:
        yield
    except Exception as exc:
        if not is_cloud_error(exc):
            raise
        from deployer.errors import Unavailable, UsageError

        line, hint = explain(exc, facts)
        cls = Unavailable if issubclass(error, UsageError) and unreachable(exc) else error
        then = then() if callable(then) else then
        raise cls(line, hint="; ".join(h for h in (hint, then) if h) or None) from None


def check_bucket(s3, bucket: str, region: str) -> None:
    """The bucket exists, we may list it, and it is in ``region`` (SageMaker reads model data
    only from a bucket in the endpoint's region). HeadBucket answers with the bucket's region
    whatever the caller's permissions; errors are left to :func:`failures`."""
    from botocore.exceptions import ClientError

    from deployer.errors import ValidationError

    answered = ""
    try:
        answer = s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        where = bucket_region(exc.response)
        code = str(exc.response.get("Error", {}).get("Code"))
        if where and where != region and code in REGION_CODES | {"400", "403"}:
            answer = exc.response
            answered = f" (HeadBucket answered {HEAD_CODES.get(code, (code,))[0]})"
        else:
            raise
    where = answer.get("BucketRegion") or bucket_region(answer)
    if where and where != region:
        raise ValidationError(
            f"S3 bucket {bucket} is in {where}, not {region}{answered}: SageMaker reads model "
            "data only from a bucket in the endpoint's region",
            hint=f"pass -o region={where}, or a bucket in {region}: aws s3 mb s3://NAME "
                 f"--region {region}")


SAGEMAKER_SERVICE = "sagemaker.amazonaws.com"
TRUST_POLICY = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":'
                '{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}')


def role_name(arn: str) -> tuple[str, str]:
    """``(account, name)`` of a role ARN; the path goes (``role/service-role/Name`` → Name),
    as GetRole takes the bare name."""
    _, _, _, _, account, resource = arn.split(":", 5)
    return account, resource.rsplit("/", 1)[-1]


def check_role(iam, role: str, progress) -> None:
    """The execution role exists (the very ARN: path and account too) and its trust policy
    lets SageMaker assume it. A caller that may not read it gets a warning, not a failure;
    other errors are left to :func:`failures`."""
    from botocore.exceptions import ClientError

    from deployer.errors import ValidationError

    account, name = role_name(role)
    try:
        found = iam.get_role(RoleName=name)["Role"]
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code == "NoSuchEntity":
            raise ValidationError(
                f"execution role {name} does not exist in account {account} ({role})",
                hint="pass -o role= an existing role, or create one SageMaker may assume: aws "
                     f"iam create-role --role-name {name} --assume-role-policy-document "
                     f"'{TRUST_POLICY}'") from None
        if code in ("AccessDenied", "AccessDeniedException"):
            progress(f"warning: cannot check execution role {name} (GetRole: {code}); "
                     "SageMaker refuses it at CreateModel if it is missing or does not trust "
                     f"{SAGEMAKER_SERVICE}")
            return
        raise
    if found.get("Arn") and found["Arn"] != role:
        raise ValidationError(
            f"execution role {role} does not exist: the role named {name} is {found['Arn']}",
            hint=f"pass -o role={found['Arn']}")
    if not trusts(found.get("AssumeRolePolicyDocument"), SAGEMAKER_SERVICE):
        raise ValidationError(
            f"execution role {name} does not trust {SAGEMAKER_SERVICE}: its trust policy "
            "allows that service no sts:AssumeRole, so SageMaker cannot assume it",
            hint=f"aws iam update-assume-role-policy --role-name {name} --policy-document "
                 f"'{TRUST_POLICY}'")


def trusts(document, service: str) -> bool:
    """Whether a trust policy (a dict as boto3 decodes it, or the URL-encoded JSON IAM sends)
    lets ``service`` call sts:AssumeRole: an Allow that names it (or ``*``), and no
    unconditional Deny."""
    import fnmatch
    import json
    import urllib.parse

    if isinstance(document, str):
        try:
            document = json.loads(urllib.parse.unquote(document))
        except ValueError:
            return False
    if not isinstance(document, dict):
        return False

    def listed(value) -> list:
        return value if isinstance(value, list) else [value] if value is not None else []

    statements = listed(document.get("Statement"))
    allowed = False
    for statement in statements:
        if not isinstance(statement, dict):
            continue
        actions = [str(a).lower() for a in listed(statement.get("Action"))]
        if not any(fnmatch.fnmatchcase("sts:assumerole", a) for a in actions):
            continue
        principal = statement.get("Principal")
        named = principal == "*" or isinstance(principal, dict) and (
            service in listed(principal.get("Service")) or "*" in listed(principal.get("AWS")))
        if not named:
            continue
        if statement.get("Effect") == "Deny" and not statement.get("Condition"):
            return False
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


#: DescribeEndpoint states that end a wait for InService besides botocore's own ``Failed``:
#: a failed rolling update whose rollback failed too, and an endpoint being deleted. The
#: others (Creating, Updating, SystemUpdating, RollingBack) end in InService or Failed.
STOP_STATES = ("UpdateRollbackFailed", "Deleting")


def endpoint_state(answer: dict) -> str:
    """A DescribeEndpoint answer's EndpointStatus, or its error (``gone`` when not found)."""
    error = answer.get("Error") or {}
    if error.get("Code"):
        gone = not_found(types.SimpleNamespace(response={"Error": error}))
        return "gone" if gone else str(error["Code"])
    return str(answer.get("EndpointStatus") or "?")


@contextlib.contextmanager
def answers(client, operation: str, hear):
    """While inside, ``hear(parsed answer)`` after every ``operation`` call on ``client`` (a
    botocore waiter's polls), error answers too."""
    event = f"after-call.{client.meta.service_model.service_id.hyphenize()}.{operation}"

    def handler(parsed=None, **_):
        hear(parsed or {})

    client.meta.events.register(event, handler)
    try:
        yield
    finally:
        client.meta.events.unregister(event, handler)


def wait_in_service(sm, endpoint: str, delay: int, attempts: int, state=None) -> None:
    """botocore's ``endpoint_in_service`` waiter with :data:`STOP_STATES` as failures too;
    raises its WaiterError (``last_response`` is the last DescribeEndpoint answer).
    ``state(text)`` (when given) hears the EndpointStatus of every poll."""
    import copy

    from botocore.loaders import create_loader
    from botocore.waiter import WaiterModel, create_waiter_with_client

    model = create_loader().load_service_model("sagemaker", "waiters-2")
    config = copy.deepcopy(model["waiters"]["EndpointInService"])
    config["acceptors"] += [{"matcher": "path", "argument": "EndpointStatus",
                             "state": "failure", "expected": state} for state in STOP_STATES]
    config.update(delay=delay, maxAttempts=attempts)
    waiter = create_waiter_with_client(
        "EndpointInService", WaiterModel({"version": 2, "waiters": {
            "EndpointInService": config}}), sm)
    with answers(sm, "DescribeEndpoint", lambda answer: state and state(endpoint_state(answer))):
        waiter.wait(EndpointName=endpoint)


def log_group(endpoint: str) -> str:
    """The CloudWatch log group SageMaker writes an endpoint's container logs to."""
    return f"/aws/sagemaker/Endpoints/{endpoint}"


def log_group_exists(logs, group: str) -> bool:
    pages = logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=group)
    return any(g["logGroupName"] == group for page in pages for g in page.get("logGroups", []))


def session(region: str | None = None):
    import boto3

    return boto3.Session(region_name=region) if region else boto3.Session()


def endpoint_quota(session, name: str) -> tuple[float | None, str]:
    """``(value, '')`` of the account's applied SageMaker quota ``name`` (Service Quotas), or
    ``(None, why)`` when it cannot be read (no permission, not listed, unreachable)."""
    from botocore.config import Config

    client = session.client("service-quotas", config=Config(
        retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=5,
        read_timeout=15))
    try:
        for page in client.get_paginator("list_service_quotas").paginate(ServiceCode="sagemaker"):
            for quota in page.get("Quotas", []):
                if quota.get("QuotaName") == name and quota.get("Value") is not None:
                    return float(quota["Value"]), ""
    except Exception as exc:  # noqa: BLE001 - a quota we cannot read is a warning
        if not is_cloud_error(exc):
            raise
        return None, explain(exc, Facts())[0]
    return None, "Service Quotas does not list it"


def not_found(exc) -> bool:
    error = getattr(exc, "response", {}).get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    return code in NOT_FOUND_CODES or (code == "ValidationException" and (
        "Could not find" in message or "does not exist" in message
        or message.startswith(("No scalable target", "No scaling policy")))
        and "model data" not in message)


def unless_gone(call):
    """``call()``'s answer, or False when AWS says what it reads or deletes does not exist."""
    from botocore.exceptions import ClientError

    try:
        return call()
    except ClientError as exc:
        if not_found(exc):
            return False
        raise


def transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20,
                          max_concurrency=8)


def existing_keys(s3, bucket: str, prefix: str) -> dict[str, int]:
    """Objects under ``prefix`` (key → size)."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["Size"]
    return found


def upload_files(s3, bucket: str, items: list[tuple[str, object]], config,
                 advance=None) -> int:
    """Upload (key, path) pairs, several at a time; return the bytes sent. ``advance(n)``
    (when given, safe to call from several threads) hears of every ``n`` bytes sent."""
    def one(item) -> int:
        key, path = item
        s3.upload_file(str(path), bucket, key, Config=config, Callback=advance)
        return path.stat().st_size

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return sum(pool.map(one, items))


def delete_keys(s3, bucket: str, keys: list[str]) -> int:
    """Delete ``keys`` that still exist; return how many did."""
    if not keys:
        return 0
    prefix = common_prefix(keys)
    present = [k for k in existing_keys(s3, bucket, prefix) if k in set(keys)]
    for start in range(0, len(present), 1000):
        s3.delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": k} for k in present[start:start + 1000]], "Quiet": True})
    return len(present)


def any_key(s3, bucket: str, keys: list[str]) -> bool:
    if not keys:
        return False
    wanted = set(keys)
    return any(k in wanted for k in existing_keys(s3, bucket, common_prefix(keys)))


def common_prefix(keys: list[str]) -> str:
    import os.path

    prefix = os.path.commonprefix(keys)
    return prefix[:prefix.rfind("/") + 1] if "/" in prefix else ""


def log_tail(logs, endpoint: str, lines: int = 20) -> str:
    """The last lines of the endpoint's CloudWatch group, newest stream first ('' if none)."""
    group = log_group(endpoint)
    try:
        streams = logs.describe_log_streams(logGroupName=group, orderBy="LastEventTime",
                                            descending=True, limit=3)["logStreams"]
        collected: list[str] = []
        for stream in streams:
            events = logs.get_log_events(logGroupName=group,
                                         logStreamName=stream["logStreamName"],
                                         startFromHead=False, limit=lines)["events"]
            collected = [e["message"].rstrip() for e in events] + collected
            if len(collected) >= lines:
                break
    except Exception as exc:  # noqa: BLE001 - logs are a help, never the failure
        if not_found(exc):
            return ""
        return f"(CloudWatch logs unavailable: {explain(exc, Facts())[0]})"
    return "\n".join(collected[-lines:])


def failure_parts(sm, logs, endpoint: str, lines: int = 20) -> tuple[str, str]:
    """Why an endpoint failed: (status and FailureReason, the last CloudWatch log lines)."""
    try:
        described = sm.describe_endpoint(EndpointName=endpoint)
        reason = (f"status {described.get('EndpointStatus')}: "
                  f"{described.get('FailureReason') or 'no FailureReason given'}")
    except Exception as exc:  # noqa: BLE001
        reason = f"cannot describe the endpoint: {explain(exc, Facts())[0]}"
    return reason, log_tail(logs, endpoint, lines)


def failure(sm, logs, endpoint: str, lines: int = 20) -> str:
    """Why an endpoint failed: its FailureReason and the last CloudWatch log lines."""
    reason, tail = failure_parts(sm, logs, endpoint, lines)
    return reason + (f"; last log lines of /aws/sagemaker/Endpoints/{endpoint}:\n{tail}"
                     if tail else f"; no log lines in /aws/sagemaker/Endpoints/{endpoint}")


def waiter_reason(exc) -> str:
    """Why a botocore waiter stopped: AWS's error when its last answer was one."""
    error = (getattr(exc, "last_response", None) or {}).get("Error", {})
    if error.get("Code"):
        return _one_line(f"{error['Code']}: {error.get('Message', '')}")
    return _one_line(str(exc))


def tagged(sm, arn: str, key: str, value: str) -> bool:
    """Whether a SageMaker resource carries tag ``key`` = ``value``."""
    token = None
    while True:
        page = sm.list_tags(ResourceArn=arn, **({"NextToken": token} if token else {}))
        if any(t["Key"] == key and t["Value"] == value for t in page.get("Tags", [])):
            return True
        token = page.get("NextToken")
        if not token:
            return False
