"""Local stand-ins for the three price sources, answering from recorded responses.

Each server answers in the shape its real API returns (shortened to a few products), applies
the filters the real API applies, pages its answers (two products a page, so every query
that matches more than two spans pages) and can be told to fail: ``fail = 403`` or ``500``
answers with that cloud's own error body; ``stop()`` takes it down.

The products include decoys a correct client never takes: spot, low-priority and Windows
meters, reserved terms, another region, another component (training). The figures are this
fixture's own, chosen apart from the shipped table so a test can tell which one was used.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PAGE = 2


class PriceServer:
    """A threaded HTTP server on 127.0.0.1 (port 0); ``requests`` records what it was asked."""

    def __init__(self):
        self.fail: int | None = None
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                owner._handle(self, "GET")

            def do_POST(self):  # noqa: N802
                owner._handle(self, "POST")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        self.requests.append({"method": method, "path": handler.path, "body": body,
                              "headers": dict(handler.headers)})
        status, headers, payload = (self.failure() if self.fail else
                                    self.answer(method, handler.path, body, handler.headers))
        data = json.dumps(payload).encode()
        handler.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def answer(self, method, path, body, headers) -> tuple[int, dict, Any]:
        raise NotImplementedError

    def failure(self) -> tuple[int, dict, Any]:
        raise NotImplementedError


# ---- AWS Price List API (JSON 1.1 protocol: POST /, X-Amz-Target) ------------------------

def aws_product(sku: str, name: str, region: str, usage: str, usd: str,
                component: str = "Hosting", reserved: str | None = None) -> dict[str, Any]:
    """One GetProducts PriceList entry (the API sends each as a JSON string)."""
    term = f"{sku}.JRTCKXETXF"
    terms: dict[str, Any] = {"OnDemand": {term: {
        "priceDimensions": {f"{term}.6YS6EN2CT7": {
            "unit": "Hrs", "endRange": "Inf", "beginRange": "0", "appliesTo": [],
            "rateCode": f"{term}.6YS6EN2CT7", "pricePerUnit": {"USD": usd},
            "description": f"${usd} per {component} {name} in {region}"}},
        "sku": sku, "effectiveDate": "2026-11-01T00:00:00Z", "offerTermCode": "JRTCKXETXF",
        "termAttributes": {}}}}
    if reserved:
        rterm = f"{sku}.4NA7Y494T4"
        terms["Reserved"] = {rterm: {
            "priceDimensions": {f"{rterm}.6YS6EN2CT7": {
                "unit": "Hrs", "endRange": "Inf", "beginRange": "0", "appliesTo": [],
                "rateCode": f"{rterm}.6YS6EN2CT7", "pricePerUnit": {"USD": reserved},
                "description": "reserved"}},
            "sku": sku, "effectiveDate": "2026-11-01T00:00:00Z", "offerTermCode": "4NA7Y494T4",
            "termAttributes": {"LeaseContractLength": "1yr", "PurchaseOption": "No Upfront"}}}
    return {
        "product": {"productFamily": "ML Instance", "sku": sku, "attributes": {
            "servicecode": "AmazonSageMaker", "servicename": "Amazon SageMaker",
            "location": {"us-east-1": "US East (N. Virginia)",
                         "us-west-2": "US West (Oregon)"}[region],
            "locationType": "AWS Region", "regionCode": region, "instanceName": name,
            "instanceType": f"{name}-{component}", "component": component,
            "usagetype": usage, "operation": "RunInstance", "vCpu": "4"}},
        "serviceCode": "AmazonSageMaker", "terms": terms,
        "version": "20261101000000", "publicationDate": "2026-11-01T00:00:00Z"}


AWS_PRODUCTS = [
    aws_product("AAAA1111", "ml.g4dn.xlarge", "us-east-1", "USE1-Host:ml.g4dn.xlarge",
                "0.7100000000"),
    aws_product("AAAA2222", "ml.g4dn.xlarge", "us-east-1", "USE1-Train:ml.g4dn.xlarge",
                "0.5000000000", component="Training"),                          # decoy
    aws_product("AAAA3333", "ml.g4dn.xlarge", "us-west-2", "USW2-Host:ml.g4dn.xlarge",
                "0.9900000000"),                                                  # decoy
    aws_product("AAAA4444", "ml.m5.4xlarge", "us-east-1", "USE1-Host:ml.m5.4xlarge",
                "0.9220000000"),                                  # not in the vocabulary
    aws_product("AAAA5555", "ml.g5.xlarge", "us-east-1", "USE1-Host:ml.g5.xlarge",
                "1.4000000000", reserved="0.0100000000"),                  # decoy: Reserved
    aws_product("AAAA6666", "ml.m5.xlarge", "us-east-1", "USE1-Host:ml.m5.xlarge",
                "0.2200000000"),
    aws_product("AAAA7777", "ml.g6.xlarge", "us-east-1", "USE1-Host:ml.g6.xlarge",
                "1.0100000000"),
]
#: what a correct client takes from AWS_PRODUCTS in us-east-1
AWS_EXPECTED = {"ml.g4dn.xlarge": 0.71, "ml.g5.xlarge": 1.4, "ml.m5.xlarge": 0.22,
                "ml.g6.xlarge": 1.01}


class AwsPricing(PriceServer):
    def answer(self, method, path, body, headers):
        assert headers.get("X-Amz-Target") == "AWSPriceListService.GetProducts", headers
        query = json.loads(body)
        matched = [p for p in AWS_PRODUCTS
                   if query["ServiceCode"] == p["serviceCode"] and all(
                       p["product"]["attributes"].get(f["Field"]) == f["Value"]
                       for f in query.get("Filters", []) if f["Type"] == "TERM_MATCH")]
        start = int(query.get("NextToken") or 0)
        size = min(int(query.get("MaxResults") or 100), PAGE)
        page = {"FormatVersion": "aws_v1",
                "PriceList": [json.dumps(p) for p in matched[start:start + size]]}
        if start + size < len(matched):
            page["NextToken"] = str(start + size)
        return 200, {"Content-Type": "application/x-amz-json-1.1"}, page

    def failure(self):
        if self.fail == 403:
            return 400, {"x-amzn-ErrorType": "AccessDeniedException"}, {
                "__type": "AccessDeniedException",
                "Message": "User: arn:aws:iam::123456789012:user/ci is not authorized to "
                           "perform: pricing:GetProducts"}
        return 500, {"x-amzn-ErrorType": "InternalErrorException"}, {
            "__type": "InternalErrorException", "Message": "internal error"}


# ---- Azure Retail Prices API (GET, OData $filter, NextPageLink) --------------------------

def azure_item(sku: str, meter: str, product: str, usd: float, region: str = "eastus",
               kind: str = "Consumption", **extra: Any) -> dict[str, Any]:
    item = {
        "currencyCode": "USD", "tierMinimumUnits": 0.0, "retailPrice": usd, "unitPrice": usd,
        "armRegionName": region, "location": {"eastus": "US East",
                                              "westeurope": "EU West"}[region],
        "effectiveStartDate": "2026-11-01T00:00:00Z", "meterId": f"meter-{sku}-{meter}",
        "meterName": meter, "productId": "DZH318Z0BQ4W", "skuId": "DZH318Z0BQ4W/00F1",
        "productName": product, "skuName": meter, "serviceName": "Virtual Machines",
        "serviceId": "DZH313Z7MMC8", "serviceFamily": "Compute", "unitOfMeasure": "1 Hour",
        "type": kind, "isPrimaryMeterRegion": True, "armSkuName": sku}
    item.update(extra)
    return item


AZURE_ITEMS = [
    azure_item("Standard_NC4as_T4_v3", "NC4as T4 v3", "Virtual Machines NCasT4 v3 Series", 0.5),
    azure_item("Standard_NC4as_T4_v3", "NC4as T4 v3 Spot", "Virtual Machines NCasT4 v3 Series",
               0.05),                                                                # decoy
    azure_item("Standard_NC4as_T4_v3", "NC4as T4 v3 Low Priority",
               "Virtual Machines NCasT4 v3 Series", 0.1),                            # decoy
    azure_item("Standard_NC4as_T4_v3", "NC4as T4 v3",
               "Virtual Machines NCasT4 v3 Series Windows", 0.7),                    # decoy
    azure_item("Standard_NC4as_T4_v3", "NC4as T4 v3", "Virtual Machines NCasT4 v3 Series",
               2000.0, kind="Reservation", reservationTerm="1 Year",
               unitOfMeasure="1 Hour"),                                              # decoy
    azure_item("Standard_NC4as_T4_v3", "NC4as T4 v3", "Virtual Machines NCasT4 v3 Series",
               0.6, region="westeurope"),                               # another region
    azure_item("Standard_DS3_v2", "DS3 v2", "Virtual Machines DSv2 Series", 0.3),
    azure_item("Standard_DS3_v2", "DS3 v2", "Virtual Machines DSv2 Series Windows", 0.5),
    azure_item("Standard_NC24ads_A100_v4", "NC24ads A100 v4",
               "Virtual Machines NCadsA100v4 Series", 3.7),
]
AZURE_EXPECTED = {"Standard_NC4as_T4_v3": 0.5, "Standard_DS3_v2": 0.3,
                  "Standard_NC24ads_A100_v4": 3.7}
#: the field a $filter names → the item's field
_ODATA_FIELDS = {"priceType": "type"}


class AzurePrices(PriceServer):
    path = "/api/retail/prices"

    def answer(self, method, path, body, headers):
        url = urllib.parse.urlsplit(path)
        assert url.path == self.path, url.path
        query = dict(urllib.parse.parse_qsl(url.query))
        terms = re.findall(r"(\w+) eq '([^']*)'", query.get("$filter", ""))
        matched = [i for i in AZURE_ITEMS
                   if all(i.get(_ODATA_FIELDS.get(f, f)) == v for f, v in terms)]
        start = int(query.get("$skip") or 0)
        link = None
        if start + PAGE < len(matched):
            link = (f"{self.url}{self.path}?" + urllib.parse.urlencode(
                {"$filter": query.get("$filter", ""), "$skip": start + PAGE}))
        return 200, {}, {"BillingCurrency": "USD", "CustomerEntityId": "Default",
                         "CustomerEntityType": "Retail",
                         "Items": matched[start:start + PAGE], "NextPageLink": link,
                         "Count": len(matched[start:start + PAGE])}

    def failure(self):
        return self.fail, {}, {"Error": {"Code": "InternalServerError",
                                         "Message": "An error has occurred."}}


# ---- Cloud Billing Catalog API (GET /v1/services/ID/skus, nextPageToken) -----------------

def google_sku(sku_id: str, description: str, usd: float, regions=("us-central1",),
               usage: str = "OnDemand", unit: str = "h",
               group: str = "CPU") -> dict[str, Any]:
    units, nanos = int(usd), round((usd - int(usd)) * 1e9)
    return {
        "name": f"services/C7E2-9256-1C43/skus/{sku_id}", "skuId": sku_id,
        "description": description,
        "category": {"serviceDisplayName": "Vertex AI", "resourceFamily": "Compute",
                     "resourceGroup": group, "usageType": usage},
        "serviceRegions": list(regions),
        "pricingInfo": [{"summary": "", "pricingExpression": {
            "usageUnit": unit, "displayQuantity": 1, "usageUnitDescription": "hour",
            "baseUnit": "s", "baseUnitDescription": "second", "baseUnitConversionFactor": 3600,
            "tieredRates": [{"startUsageAmount": 0, "unitPrice": {
                "currencyCode": "USD", "units": str(units), "nanos": nanos}}]},
            "currencyConversionRate": 1, "effectiveTime": "2026-11-01T00:00:00Z"}],
        "serviceProviderName": "Google",
        "geoTaxonomy": {"type": "MULTI_REGIONAL" if len(regions) > 1 else "REGIONAL",
                        "regions": list(regions)}}


P = "Vertex AI: Online/Batch Prediction"
AMERICAS = ("us-central1", "us-east1", "us-west1")
GOOGLE_SKUS = [
    google_sku("0001", f"{P} N1 Predefined Instance Core running in Americas", 0.03, AMERICAS),
    google_sku("0002", f"{P} N1 Predefined Instance Ram running in Americas", 0.004, AMERICAS,
               unit="GiBy.h", group="RAM"),
    google_sku("0003", f"{P} Nvidia Tesla T4 GPU running in Americas", 0.4, AMERICAS,
               group="GPU"),
    google_sku("0004", "Vertex AI: Training/Pipelines on N1 Predefined Instance Core running "
                       "in Americas", 0.5, AMERICAS),                               # decoy
    google_sku("0005", f"{P} Nvidia Tesla T4 GPU running in Americas", 0.1, AMERICAS,
               usage="Preemptible", group="GPU"),                              # decoy: spot
    google_sku("0006", f"{P} N1 Predefined Instance Core running in Netherlands", 0.9,
               ("europe-west4",)),                                      # another region
    google_sku("0007", f"{P} G2 Instance Core running in Americas", 0.025, AMERICAS),
    google_sku("0008", f"{P} G2 Instance Ram running in Americas", 0.003, AMERICAS,
               unit="GiBy.h", group="RAM"),
    google_sku("0009", f"{P} Nvidia L4 GPU running in Americas", 0.65, AMERICAS, group="GPU"),
    google_sku("0010", f"{P} A2 Instance Core running in Americas", 0.035, AMERICAS),
    google_sku("0011", f"{P} A2 Instance Ram running in Americas", 0.005, AMERICAS,
               unit="GiBy.h", group="RAM"),
    google_sku("0012", f"{P} management fee on A2 Instance Core in Iowa", 0.002,
               ("us-central1",)),
    google_sku("0013", f"{P} management fee on A2 Instance RAM in Iowa", 0.0003,
               ("us-central1",), unit="GiBy.h", group="RAM"),
]
GOOGLE_EXPECTED = {
    "n1-standard-4": round(4 * 0.03 + 15 * 0.004, 6),
    "n1-standard-8": round(8 * 0.03 + 30 * 0.004, 6),
    "n1-standard-16": round(16 * 0.03 + 60 * 0.004, 6),
    "g2-standard-4": round(4 * 0.025 + 16 * 0.003, 6),
    "g2-standard-24": round(24 * 0.025 + 96 * 0.003, 6),
    "g2-standard-48": round(48 * 0.025 + 192 * 0.003, 6),
    "g2-standard-96": round(96 * 0.025 + 384 * 0.003, 6),
    "a2-highgpu-1g": round(12 * (0.035 + 0.002) + 85 * (0.005 + 0.0003), 6),
    "a2-highgpu-2g": round(24 * (0.035 + 0.002) + 170 * (0.005 + 0.0003), 6),
    "a2-highgpu-4g": round(48 * (0.035 + 0.002) + 340 * (0.005 + 0.0003), 6),
    "a2-highgpu-8g": round(96 * (0.035 + 0.002) + 680 * (0.005 + 0.0003), 6),
    "NVIDIA_TESLA_T4": 0.4, "NVIDIA_L4": 0.65,
}


class CloudBilling(PriceServer):
    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def answer(self, method, path, body, headers):
        url = urllib.parse.urlsplit(path)
        assert url.path == "/v1/services/C7E2-9256-1C43/skus", url.path
        query = dict(urllib.parse.parse_qsl(url.query))
        if (headers.get("X-goog-api-key") or query.get("key")) != self.key:
            return 400, {}, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                       "message": "API key not valid. Please pass a valid "
                                                  "API key."}}
        start = int(query.get("pageToken") or 0)
        size = min(int(query.get("pageSize") or 5000), PAGE)
        following = start + size
        return 200, {}, {"skus": GOOGLE_SKUS[start:following],
                         "nextPageToken": str(following) if following < len(GOOGLE_SKUS)
                         else ""}

    def failure(self):
        return self.fail, {}, {"error": {"code": self.fail, "status": "PERMISSION_DENIED"
                                         if self.fail == 403 else "INTERNAL",
                                         "message": "Cloud Billing API has not been used in "
                                                    "project 123 before or it is disabled."}}
