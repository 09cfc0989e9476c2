"""Current on-demand list prices, fetched from each cloud's own price source into the cache.

``refresh()`` asks each cloud's price source for the instance types the deployer prices (the
hardware vocabulary's and the shipped table's, see :func:`types_to_price`) in one region per
cloud, and writes what it got to ``<cache>/prices.json`` in the shipped table's schema, with
the fetch date, region and source per cloud. ``compare.price_table`` reads that file before
the shipped table. Prices are USD per hour, Linux, on-demand: never spot or low priority,
reserved, savings plans or Windows.

- **sagemaker**: the AWS Price List API (boto3 ``pricing`` client, ``GetProducts``; needs
  credentials allowed ``pricing:GetProducts``). One query per region: ServiceCode
  ``AmazonSageMaker``, ``component`` = ``Hosting`` (real-time endpoint instances; their
  ``usagetype`` reads ``USE1-Host:ml.g4dn.xlarge``) and ``regionCode``; each product's
  ``instanceName`` is the instance type, its ``terms.OnDemand`` dimension in ``Hrs`` the price.
  The API answers only in us-east-1, eu-central-1 and ap-south-1 (botocore's endpoint list);
  any of them lists every region's prices. ``AWS_ENDPOINT_URL_PRICING`` points it elsewhere.
- **azure**: the Azure Retail Prices API (public, no credentials), one OData query per SKU:
  ``serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and armRegionName eq R
  and armSkuName eq S``, following ``NextPageLink``; Spot, Low Priority and Windows meters
  are left out. Managed online endpoints bill the VM's price.
- **vertex**: the Cloud Billing Catalog API, ``GET /v1/services/C7E2-9256-1C43/skus`` (Vertex
  AI), with an API key from ``GOOGLE_CLOUD_API_KEY`` sent in the ``X-goog-api-key`` header
  (never in a URL), following ``nextPageToken``. Online prediction bills a machine per vCPU-hour
  and per GiB-hour of its family (``Vertex AI: Online/Batch Prediction N1 Predefined Instance
  Core running in …``, ``… Instance Ram …``, plus the family's ``management fee on …`` SKUs when
  the catalog lists them), and each GPU per GPU-hour (``… Prediction Nvidia Tesla T4 GPU
  running in …``): a machine's price is vCPUs × core rate + GiB × RAM rate (see
  :data:`VERTEX_MACHINES`). A SKU counts for a region when its ``serviceRegions`` names it and
  its ``category.usageType`` is ``OnDemand``.

A cloud that cannot be reached, refuses the credentials, or lacks its client library keeps
the prices it had (from an earlier refresh, else the shipped table): one warning, never a
failure. Types its source does not list are reported, never guessed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import UsageError

CLOUDS = ("sagemaker", "azure", "vertex")
#: bumped when the cache file's layout changes; another value is an old file, not read
SCHEMA = 1
CACHE_FILE = "prices.json"
GOOGLE_KEY_ENV = "GOOGLE_CLOUD_API_KEY"
#: base URLs of the public price sources (tests point them at local servers)
AZURE_URL_ENV = "DEPLOYER_AZURE_PRICES_URL"
AZURE_URL = "https://prices.azure.com/api/retail/prices"
GOOGLE_URL_ENV = "DEPLOYER_CLOUDBILLING_URL"
GOOGLE_URL = "https://cloudbilling.googleapis.com"
#: the Price List API's own endpoint region (it also answers in eu-central-1 and ap-south-1)
AWS_PRICING_REGION = "us-east-1"
VERTEX_SERVICE_ID = "C7E2-9256-1C43"
SOURCE_NAMES = {"sagemaker": "AWS Price List API", "azure": "Azure Retail Prices API",
                "vertex": "Google Cloud Billing Catalog API"}
TIMEOUT = 30.0
MAX_PAGES = 200

#: vCPUs and memory (GiB) of the Vertex machine types priced here, from Compute Engine's
#: machine families (https://cloud.google.com/compute/docs/general-purpose-machines#n1_machines,
#: https://cloud.google.com/compute/docs/accelerator-optimized-machines: A2, A3, G2), which
#: Vertex AI's "Configure compute resources for inference" page repeats.
VERTEX_MACHINES: dict[str, tuple[int, float]] = {
    "n1-standard-2": (2, 7.5), "n1-standard-4": (4, 15), "n1-standard-8": (8, 30),
    "n1-standard-16": (16, 60), "n1-standard-32": (32, 120),
    "g2-standard-4": (4, 16), "g2-standard-8": (8, 32), "g2-standard-12": (12, 48),
    "g2-standard-16": (16, 64), "g2-standard-24": (24, 96), "g2-standard-32": (32, 128),
    "g2-standard-48": (48, 192), "g2-standard-96": (96, 384),
    "a2-highgpu-1g": (12, 85), "a2-highgpu-2g": (24, 170), "a2-highgpu-4g": (48, 340),
    "a2-highgpu-8g": (96, 680), "a3-highgpu-8g": (208, 1872),
}
#: Vertex accelerator type → the GPU's name in its online-prediction SKU descriptions
VERTEX_GPUS = {"NVIDIA_TESLA_T4": "Nvidia Tesla T4", "NVIDIA_L4": "Nvidia L4",
               "NVIDIA_TESLA_A100": "Nvidia Tesla A100", "NVIDIA_A100_80GB": "Nvidia A100 80gb",
               "NVIDIA_H100_80GB": "Nvidia H100 80gb", "NVIDIA_TESLA_V100": "Nvidia Tesla V100",
               "NVIDIA_TESLA_P4": "Nvidia Tesla P4", "NVIDIA_TESLA_P100": "Nvidia Tesla P100"}
_REGION = re.compile(r"^[a-z][a-z0-9-]{1,40}$")


class SourceFailed(Exception):
    """A price source could not be used; ``str()`` is why, in one line."""


@dataclasses.dataclass
class CloudRefresh:
    """What one cloud's refresh did."""

    cloud: str
    region: str
    source: str
    #: the fetch date (YYYY-MM-DD), or None when the source failed
    fetched: str | None = None
    count: int = 0
    #: the types asked for that the source does not list (or lists ambiguously)
    missing: list[str] = dataclasses.field(default_factory=list)
    #: why the source failed and which prices the cloud kept, or None
    warning: str | None = None
    prices: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["prices"]
        return data


def shipped() -> dict[str, Any]:
    """The price table packaged with the deployer (``deployer/prices.json``)."""
    return json.loads(resources.files("deployer").joinpath("prices.json").read_text())


def cache_path() -> Path:
    from .runtime import cache_dir

    return cache_dir() / CACHE_FILE


def types_to_price() -> dict[str, list[str]]:
    """Per cloud, the instance types to price: every priced part of the hardware vocabulary's
    types (an ``instance_type``; a Vertex machine and its accelerator apart, see
    :func:`deployer.hardware.parts`), plus every type in the shipped price table."""
    from . import hardware

    found: dict[str, set[str]] = {cloud: set() for cloud in CLOUDS}
    for cloud in hardware.vocabulary()["clouds"]:
        for choices in hardware.types(cloud).values():
            found.setdefault(cloud, set()).update(
                kind for choice in choices for kind, _ in hardware.parts(choice["options"]))
    for name, entry in shipped()["prices"].items():
        found.setdefault(entry["cloud"], set()).add(name)
    return {cloud: sorted(names) for cloud, names in found.items()}


def read_cache() -> tuple[dict[str, Any] | None, str | None]:
    """The cached table and None; (None, None) when there is none; (None, why) when it is
    corrupt or of another schema."""
    path = cache_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read the price cache {path}: {exc.strerror}"
    try:
        table = json.loads(text)
        if table.get("schema") != SCHEMA:
            raise ValueError(f"schema {table.get('schema')!r}, expected {SCHEMA}")
        sources, prices = table["sources"], table["prices"]
        for cloud, source in sources.items():
            if cloud not in CLOUDS or not {"region", "source", "date"} <= source.keys():
                raise ValueError(f"bad source entry {cloud!r}")
        for name, entry in prices.items():
            if entry["cloud"] not in sources or not isinstance(entry["usd_per_hour"],
                                                               (int, float)):
                raise ValueError(f"bad price entry {name!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, (f"ignored the price cache {path} ({exc}): using the shipped prices; "
                      "run 'deployer prices refresh' to rewrite it")
    return table, None


def unlisted(cloud: str, region: str) -> tuple[set[str], str] | None:
    """The types (lower case) the cloud's price source, fetched for ``region``, does not list
    there, and the words naming that source; None when the cache has no fetch of that cloud
    for that region. A type listed at several prices counts as listed."""
    table, _ = read_cache()
    source = (table or {}).get("sources", {}).get(cloud)
    if not source or source["region"] != region:
        return None
    return ({name.lower() for name in source.get("missing", []) if " (" not in name},
            f"the {source['source']} fetched {source['date']}")


def refresh(clouds: Iterable[str] | None = None, regions: Mapping[str, str] | None = None,
            progress: Callable[[str], None] | None = None,
            today: datetime.date | None = None) -> list[CloudRefresh]:
    """Fetch current prices for ``clouds`` (default: all) in ``regions`` (cloud → region;
    default: the region the shipped table names) and write them to the cache.

    A cloud whose source fails keeps what it had (the cache's earlier prices, else the shipped
    ones) and gets a ``warning``; it never raises for that. Raises ``UsageError`` for an
    unknown cloud or a malformed region."""
    clouds = list(dict.fromkeys(clouds or CLOUDS))
    regions = dict(regions or {})
    for cloud in [*clouds, *regions]:
        if cloud not in CLOUDS:
            raise UsageError(f"unknown cloud {cloud!r}", hint=f"one of {', '.join(CLOUDS)}")
    for cloud, region in regions.items():
        if not _REGION.match(region):
            raise UsageError(f"region {region!r} for {cloud} is not a region name",
                             hint="e.g. --region azure=westeurope")
    say = progress or (lambda _: None)
    base = shipped()
    wanted = types_to_price()
    date = (today or datetime.datetime.now(datetime.timezone.utc).date()).isoformat()
    cached, _ = read_cache()
    fetchers = {"sagemaker": _fetch_sagemaker, "azure": _fetch_azure, "vertex": _fetch_vertex}
    results = []
    for cloud in clouds:
        region = regions.get(cloud) or base["sources"][cloud]["region"]
        result = CloudRefresh(cloud, region, SOURCE_NAMES[cloud])
        names = wanted.get(cloud, [])
        say(f"{cloud}: asking the {result.source} for {len(names)} type(s) in {region}")
        try:
            try:
                found = fetchers[cloud](names, region)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # an answer in a shape we do not know is the source failing, not the command
                raise SourceFailed(f"the {result.source} answered in an unexpected shape "
                                   f"({type(exc).__name__}: {_line(str(exc))})") from None
        except SourceFailed as exc:
            had = cached and cached["sources"].get(cloud)
            kept = (f"the prices fetched on {had['date']} ({had['region']})" if had else
                    f"the shipped prices ({base['sources'][cloud]['date']})")
            result.warning = f"{exc}; kept {kept}"
            results.append(result)
            continue
        result.prices = {n: v for n, v in found.items() if isinstance(v, float)}
        result.missing = [n if found.get(n) is None else f"{n} ({found[n]})"
                          for n in names if not isinstance(found.get(n), float)]
        result.fetched, result.count = date, len(result.prices)
        results.append(result)
    fresh = [r for r in results if r.fetched]
    if fresh:
        _write(cached, fresh, base)
    return results


def _write(cached: dict[str, Any] | None, fresh: list[CloudRefresh],
           base: dict[str, Any]) -> None:
    table = cached or {"sources": {}, "prices": {}}
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for result in fresh:
        table["sources"][result.cloud] = {
            "region": result.region, "source": result.source, "date": result.fetched,
            "fetched_at": now, "missing": result.missing}
        table["prices"] = {n: e for n, e in table["prices"].items()
                           if e["cloud"] != result.cloud}
        table["prices"].update({n: {"usd_per_hour": v, "cloud": result.cloud}
                                for n, v in sorted(result.prices.items())})
    data = {"about": ("Prices fetched by 'deployer prices refresh' from each cloud's price "
                      "source; " + base["about"]),
            "schema": SCHEMA, "sources": table["sources"], "prices": table["prices"]}
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(partial, path)


def _one(prices: dict[str, set[float]], names: Iterable[str]) -> dict[str, Any]:
    """type → its one price; a type listed at several prices is reported, not picked."""
    found: dict[str, Any] = {}
    for name in names:
        seen = prices.get(name, set())
        if len(seen) == 1:
            found[name] = float(next(iter(seen)))
        elif seen:
            found[name] = f"listed at {len(seen)} different prices"
    return found


# ---- AWS ---------------------------------------------------------------------------------

def _fetch_sagemaker(names: list[str], region: str) -> dict[str, Any]:
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:
        raise SourceFailed("boto3 is not installed (pip install 'triton-deployer[sagemaker]')"
                           ) from None
    wanted, prices = set(names), {}
    try:
        client = boto3.client("pricing", region_name=AWS_PRICING_REGION, config=Config(
            retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=10,
            read_timeout=TIMEOUT))
        filters = [{"Type": "TERM_MATCH", "Field": "component", "Value": "Hosting"},
                   {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}]
        token = None
        for _ in range(MAX_PAGES):
            page = client.get_products(ServiceCode="AmazonSageMaker", Filters=filters,
                                       FormatVersion="aws_v1", MaxResults=100,
                                       **({"NextToken": token} if token else {}))
            for item in page.get("PriceList", []):
                _aws_product(json.loads(item) if isinstance(item, str) else item, region,
                             wanted, prices)
            token = page.get("NextToken")
            if not token:
                break
    except NoCredentialsError:
        raise SourceFailed("no AWS credentials (the Price List API needs credentials allowed "
                           "pricing:GetProducts)") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise SourceFailed(f"the AWS Price List API refused: {error.get('Code', '?')}: "
                           f"{_line(error.get('Message', ''))}") from None
    except BotoCoreError as exc:
        raise SourceFailed(f"cannot reach the AWS Price List API: {_line(str(exc))}") from None
    return _one(prices, names)


def _aws_product(product: dict[str, Any], region: str, wanted: set[str],
                 prices: dict[str, set[float]]) -> None:
    attributes = product.get("product", {}).get("attributes", {})
    name = attributes.get("instanceName")
    usage = attributes.get("usagetype", "")
    # the query asked for these; checked again so that nothing else is ever taken
    if (name not in wanted or attributes.get("component") != "Hosting"
            or attributes.get("regionCode") != region or "Host:" not in usage):
        return
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if dimension.get("unit") == "Hrs" and usd and float(usd) > 0:
                prices.setdefault(name, set()).add(round(float(usd), 6))


# ---- Azure -------------------------------------------------------------------------------

def _fetch_azure(names: list[str], region: str) -> dict[str, Any]:
    base = os.environ.get(AZURE_URL_ENV) or AZURE_URL
    prices: dict[str, set[float]] = {}
    for name in names:
        query = (f"serviceName eq 'Virtual Machines' and priceType eq 'Consumption' "
                 f"and armRegionName eq '{region}' and armSkuName eq '{name}'")
        url: str | None = f"{base}?{urllib.parse.urlencode({'$filter': query})}"
        for _ in range(MAX_PAGES):
            if not url:
                break
            page = _get_json(url, "the Azure Retail Prices API")
            for item in page.get("Items", []):
                if _azure_linux_on_demand(item, name, region):
                    prices.setdefault(name, set()).add(round(float(item["retailPrice"]), 6))
            url = page.get("NextPageLink")
    return _one(prices, names)


def _azure_linux_on_demand(item: dict[str, Any], name: str, region: str) -> bool:
    meter = f"{item.get('meterName', '')} {item.get('skuName', '')}"
    return (item.get("armSkuName") == name and item.get("armRegionName") == region
            and item.get("type") == "Consumption" and item.get("unitOfMeasure") == "1 Hour"
            and item.get("currencyCode", "USD") == "USD"
            and "Spot" not in meter and "Low Priority" not in meter
            and "Windows" not in item.get("productName", "")
            and float(item.get("retailPrice") or 0) > 0)


# ---- Google ------------------------------------------------------------------------------

def _fetch_vertex(names: list[str], region: str) -> dict[str, Any]:
    key = os.environ.get(GOOGLE_KEY_ENV, "").strip()
    if not key:
        raise SourceFailed(f"no API key: set {GOOGLE_KEY_ENV} to a Google Cloud API key that "
                           "may call the Cloud Billing API")
    base = (os.environ.get(GOOGLE_URL_ENV) or GOOGLE_URL).rstrip("/")
    rates: dict[str, list[dict[str, Any]]] = {}   # description → SKUs in the region
    token = ""
    for _ in range(MAX_PAGES):
        query = {"currencyCode": "USD", "pageSize": 5000, **({"pageToken": token} if token else {})}
        page = _get_json(f"{base}/v1/services/{VERTEX_SERVICE_ID}/skus?"
                         f"{urllib.parse.urlencode(query)}", "the Cloud Billing Catalog API",
                         headers={"X-goog-api-key": key})
        for sku in page.get("skus", []):
            if (region in sku.get("serviceRegions", [])
                    and sku.get("category", {}).get("usageType") == "OnDemand"):
                rate = _google_rate(sku)
                if rate is not None:
                    rates.setdefault(sku.get("description", ""), []).append(rate)
        token = page.get("nextPageToken") or ""
        if not token:
            break
    found: dict[str, Any] = {}
    for name in names:
        found[name] = (_vertex_gpu(name, rates) if name in VERTEX_GPUS or name.isupper()
                       else _vertex_machine(name, rates))
    return {n: v for n, v in found.items() if v is not None}


def _google_rate(sku: dict[str, Any]) -> float | None:
    """USD per usage unit: the first tier with a price (a free first tier is an allowance)."""
    for info in sku.get("pricingInfo", [])[:1]:
        tiers = info.get("pricingExpression", {}).get("tieredRates", [])
        for tier in sorted(tiers, key=lambda t: float(t.get("startUsageAmount", 0))):
            price = tier.get("unitPrice", {})
            usd = int(price.get("units") or 0) + int(price.get("nanos") or 0) / 1e9
            if usd > 0:
                return usd
    return None


def _matching(rates: Mapping[str, list[float]], pattern: str) -> float | str | None:
    matched = {round(r, 9) for d, rs in rates.items() if re.match(pattern, d, re.I) for r in rs}
    if len(matched) > 1:
        return f"listed at {len(matched)} different prices"
    return next(iter(matched)) if matched else None


def _vertex_gpu(name: str, rates: Mapping[str, list[float]]) -> float | str | None:
    gpu = VERTEX_GPUS.get(name)
    if gpu is None:
        return "no SKU name known for this accelerator"
    rate = _matching(rates, rf"Vertex AI: Online/Batch Prediction {re.escape(gpu)} GPU "
                            r"running in ")
    return round(rate, 6) if isinstance(rate, float) else rate


def _vertex_machine(name: str, rates: Mapping[str, list[float]]) -> float | str | None:
    shape = VERTEX_MACHINES.get(name)
    if shape is None:
        return "its vCPUs and memory are not in deployer.pricing.VERTEX_MACHINES"
    vcpus, gib = shape
    family = re.escape(name.split("-")[0].upper())
    usage = r"Vertex AI: Online/Batch Prediction {f}( Predefined)? Instance {part} running in "
    fee = (r"Vertex AI: Online/Batch Prediction management fee on {f}( Predefined)? "
           r"Instance {part} in ")
    total = 0.0
    for pattern, required in ((usage, True), (fee, False)):
        core = _matching(rates, pattern.format(f=family, part="Core"))
        ram = _matching(rates, pattern.format(f=family, part="Ram"))
        for part in (core, ram):
            if isinstance(part, str):
                return part
        if core is None or ram is None:
            if required:
                return None
            continue
        total += vcpus * core + gib * ram
    return round(total, 6)


# ---- HTTP --------------------------------------------------------------------------------

def _get_json(url: str, what: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise SourceFailed(f"{what} answered HTTP {exc.code}: {_error_text(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceFailed(f"cannot reach {what}: {_line(str(reason))}") from None
    except ValueError:
        raise SourceFailed(f"{what} answered something other than JSON") from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The error body's message (``error.message``, ``Error.Message``…), else the reason."""
    try:
        body = json.loads(exc.read().decode("utf-8", "replace"))
        error = body.get("error") or body.get("Error") or body
        message = (error.get("message") or error.get("Message") if isinstance(error, dict)
                   else None)
        return _line(message or exc.reason)
    except (ValueError, AttributeError, OSError):
        return _line(str(exc.reason))


def _line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
