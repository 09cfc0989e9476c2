"""The AWS control plane calls the target makes (boto3, imported here only)."""

from __future__ import annotations

import concurrent.futures

TAG_KEY = "triton-deployer:deployment-id"
NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404", "ResourceNotFound",
                   "ResourceNotFoundException", "NoSuchBucket"}


def session(region: str | None = None):
    import boto3

    return boto3.Session(region_name=region) if region else boto3.Session()


def not_found(exc) -> bool:
    error = getattr(exc, "response", {}).get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    return code in NOT_FOUND_CODES or (code == "ValidationException" and (
        "Could not find" in message or "does not exist" in message))


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


def upload_files(s3, bucket: str, items: list[tuple[str, object]], config) -> int:
    """Upload (key, path) pairs, several at a time; return the bytes sent."""
    def one(item) -> int:
        key, path = item
        s3.upload_file(str(path), bucket, key, Config=config)
        return path.stat().st_size

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return sum(pool.map(one, items))


def delete_keys(s3, bucket: str, keys: list[str]) -> int:
    """Delete ``keys`` that still exist; return how many did."""
    if not keys:
        return 0
    prefix = _common_prefix(keys)
    present = [k for k in existing_keys(s3, bucket, prefix) if k in set(keys)]
    for start in range(0, len(present), 1000):
        s3.delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": k} for k in present[start:start + 1000]], "Quiet": True})
    return len(present)


def any_key(s3, bucket: str, keys: list[str]) -> bool:
    if not keys:
        return False
    wanted = set(keys)
    return any(k in wanted for k in existing_keys(s3, bucket, _common_prefix(keys)))


def _common_prefix(keys: list[str]) -> str:
    import os.path

    prefix = os.path.commonprefix(keys)
    return prefix[:prefix.rfind("/") + 1] if "/" in prefix else ""


def log_tail(logs, endpoint: str, lines: int = 20) -> str:
    """The last lines of the endpoint's CloudWatch group, newest stream first ('' if none)."""
    group = f"/aws/sagemaker/Endpoints/{endpoint}"
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
        return f"(CloudWatch logs unavailable: {exc})"
    return "\n".join(collected[-lines:])


def failure_parts(sm, logs, endpoint: str, lines: int = 20) -> tuple[str, str]:
    """Why an endpoint failed: (status and FailureReason, the last CloudWatch log lines)."""
    try:
        described = sm.describe_endpoint(EndpointName=endpoint)
        reason = (f"status {described.get('EndpointStatus')}: "
                  f"{described.get('FailureReason') or 'no FailureReason given'}")
    except Exception as exc:  # noqa: BLE001
        reason = f"cannot describe the endpoint: {exc}"
    return reason, log_tail(logs, endpoint, lines)


def failure(sm, logs, endpoint: str, lines: int = 20) -> str:
    """Why an endpoint failed: its FailureReason and the last CloudWatch log lines."""
    reason, tail = failure_parts(sm, logs, endpoint, lines)
    return reason + (f"; last log lines of /aws/sagemaker/Endpoints/{endpoint}:\n{tail}"
                     if tail else f"; no log lines in /aws/sagemaker/Endpoints/{endpoint}")


def error_text(exc) -> str:
    """One line for a botocore ClientError (code and message), else the exception."""
    error = getattr(exc, "response", {}).get("Error", {})
    if error.get("Code"):
        return f"{error['Code']}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"
