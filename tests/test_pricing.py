"""``deployer prices refresh``: the real clients (boto3, urllib) against recorded price
sources on this machine, and what compare then prices with."""

from __future__ import annotations

import datetime
import json

import pytest

from deployer import pricing
from deployer.cli import main
from deployer.compare import TargetResult, _cost, price_table
from price_servers import (AWS_EXPECTED, AZURE_EXPECTED, GOOGLE_EXPECTED, AwsPricing,
                           AzurePrices, CloudBilling)

KEY = "AIzaSyTEST-not-a-real-key-0123456789"
TODAY = datetime.datetime.now(datetime.timezone.utc).date().isoformat()


@pytest.fixture
def sources(tmp_path, monkeypatch):
    aws, azure, google = AwsPricing(), AzurePrices(), CloudBilling(KEY)
    monkeypatch.delenv("DEPLOYER_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", aws.url)
    monkeypatch.setenv(pricing.AZURE_URL_ENV, azure.url + azure.path)
    monkeypatch.setenv(pricing.GOOGLE_URL_ENV, google.url)
    monkeypatch.setenv(pricing.GOOGLE_KEY_ENV, KEY)
    yield {"sagemaker": aws, "azure": azure, "vertex": google}
    for server in (aws, azure, google):
        try:
            server.stop()
        except OSError:
            pass


def refresh(capsys, *args):
    code = main(["prices", "refresh", *args])
    out, err = capsys.readouterr()
    return code, out, err


def cached():
    return json.loads(pricing.cache_path().read_text())


def test_refresh_writes_each_clouds_own_figures_with_their_date_region_and_source(
        sources, capsys, tmp_path):
    code, out, err = refresh(capsys, "--json")
    assert code == 0, err
    assert pricing.cache_path() == tmp_path / "cache" / "triton-deployer" / "prices.json"
    table = cached()
    prices = {n: e["usd_per_hour"] for n, e in table["prices"].items()}
    # exactly the recorded figures: no spot, low-priority, Windows, reserved, training or
    # other-region price was taken, and a type outside the vocabulary was not written
    for expected in (AWS_EXPECTED, AZURE_EXPECTED, GOOGLE_EXPECTED):
        assert {n: prices.get(n) for n in expected} == expected
    assert "ml.m5.4xlarge" not in prices
    assert {n for n, e in table["prices"].items()} == {*AWS_EXPECTED, *AZURE_EXPECTED,
                                                       *GOOGLE_EXPECTED}
    assert table["sources"]["sagemaker"] | {"fetched_at": None, "missing": None} == {
        "region": "us-east-1", "source": "AWS Price List API", "date": TODAY,
        "fetched_at": None, "missing": None}
    assert table["sources"]["azure"]["region"] == "eastus"
    assert table["sources"]["vertex"]["region"] == "us-central1"
    # the JSON result: per cloud region, source, date, count and the types not listed
    result = {c["cloud"]: c for c in json.loads(out)["clouds"]}
    assert result["sagemaker"]["count"] == len(AWS_EXPECTED)
    assert "ml.p5.48xlarge" in result["sagemaker"]["missing"]
    assert "Standard_NC64as_T4_v3" in result["azure"]["missing"]
    assert "NVIDIA_H100_80GB" in result["vertex"]["missing"]
    assert "a3-highgpu-8g" in result["vertex"]["missing"]
    assert all(c["fetched"] == TODAY and c["warning"] is None for c in result.values())
    assert "warning" not in err
    # paging reached the following pages of each source
    aws_tokens = [json.loads(r["body"]).get("NextToken") for r in sources["sagemaker"].requests]
    assert aws_tokens[:2] == [None, "2"]
    assert any("skip=2" in r["path"] for r in sources["azure"].requests)
    assert any("pageToken=2" in r["path"] for r in sources["vertex"].requests)
    # what was asked: the hosting component in the region; on-demand Linux VMs
    filters = json.loads(sources["sagemaker"].requests[0]["body"])["Filters"]
    assert {(f["Field"], f["Value"]) for f in filters} == {("component", "Hosting"),
                                                           ("regionCode", "us-east-1")}
    assert "priceType eq 'Consumption'" in _unquoted(sources["azure"].requests[0]["path"])
    # the API key went in a header only, and nowhere the user or a file can see
    assert all(KEY not in r["path"] for r in sources["vertex"].requests)
    sent = {k.lower(): v for k, v in sources["vertex"].requests[0]["headers"].items()}
    assert sent["x-goog-api-key"] == KEY
    assert KEY not in out + err + pricing.cache_path().read_text()


def _unquoted(path):
    import urllib.parse

    return urllib.parse.unquote_plus(path)


def test_compare_prices_with_the_fresh_figures_names_their_source_and_price_still_wins(
        sources, capsys):
    assert refresh(capsys)[0] == 0
    table = price_table()
    entry = table["prices"]["ml.g4dn.xlarge"]
    assert entry["usd_per_hour"] == 0.71
    assert entry["source"]["label"] == f"AWS Price List API, fetched {TODAY}, us-east-1"
    # a type the source did not list keeps the shipped figure, and says so
    shipped = pricing.shipped()
    assert table["prices"]["ml.t2.medium"]["usd_per_hour"] == (
        shipped["prices"]["ml.t2.medium"]["usd_per_hour"])
    assert table["prices"]["ml.t2.medium"]["source"]["label"].startswith("shipped price table")
    assert price_table({"ML.G4DN.XLARGE": 0.5})["prices"]["ml.g4dn.xlarge"]["usd_per_hour"] == 0.5
    # the cost note names where the figure comes from; on Vertex, machine and GPU apart
    result = TargetResult(target="vertex", name="x")
    _cost(result, [("n1-standard-4", 1), ("NVIDIA_TESLA_T4", 1)], table)
    assert result.cost_per_hour == round(GOOGLE_EXPECTED["n1-standard-4"] + 0.4, 4)
    assert result.cost_note == ("estimate from list prices: Google Cloud Billing Catalog API, "
                                f"fetched {TODAY}, us-central1")
    # `deployer prices show` prints the same table
    assert main(["prices", "show", "--json"]) == 0
    shown = {e["instance_type"]: e for e in json.loads(capsys.readouterr().out)}
    assert shown["Standard_NC4as_T4_v3"]["usd_per_hour"] == 0.5
    assert shown["Standard_NC4as_T4_v3"]["source"]["region"] == "eastus"


@pytest.mark.parametrize("cloud, failure, why", [
    ("sagemaker", 403, "the AWS Price List API refused: AccessDeniedException: User: "
                       "arn:aws:iam::123456789012:user/ci is not authorized"),
    ("azure", 500, "the Azure Retail Prices API answered HTTP 500: An error has occurred."),
    ("vertex", "down", "cannot reach the Cloud Billing Catalog API"),
    ("vertex", 403, "the Cloud Billing Catalog API answered HTTP 403: Cloud Billing API has "
                    "not been used"),
])
def test_a_source_that_fails_keeps_the_clouds_prices_with_one_warning(
        sources, capsys, cloud, failure, why):
    if failure == "down":
        sources[cloud].stop()
    else:
        sources[cloud].fail = failure
    code, out, err = refresh(capsys, "--json")
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {cloud}: {why}"), err
    assert "kept the shipped prices" in warnings[0]
    assert KEY not in out + err
    result = {c["cloud"]: c for c in json.loads(out)["clouds"]}
    assert result[cloud]["fetched"] is None and result[cloud]["warning"] in warnings[0]
    table = cached()
    assert cloud not in table["sources"] and len(table["sources"]) == 2
    # compare prices that cloud from the shipped table, and says so
    name = {"sagemaker": "ml.g4dn.xlarge", "azure": "Standard_NC4as_T4_v3",
            "vertex": "n1-standard-4"}[cloud]
    entry = price_table()["prices"][name.lower()]
    assert entry["usd_per_hour"] == pricing.shipped()["prices"][name]["usd_per_hour"]
    assert entry["source"]["label"].startswith("shipped price table")


def test_a_later_failure_keeps_the_prices_fetched_before(sources, capsys):
    assert refresh(capsys)[0] == 0
    sources["azure"].fail = 500
    code, _, err = refresh(capsys, "--cloud", "azure")
    assert code == 0 and f"kept the prices fetched on {TODAY} (eastus)" in err
    assert price_table()["prices"]["standard_nc4as_t4_v3"]["usd_per_hour"] == 0.5


def test_without_an_api_key_vertex_keeps_its_prices(sources, capsys, monkeypatch):
    monkeypatch.delenv(pricing.GOOGLE_KEY_ENV)
    code, out, err = refresh(capsys, "--cloud", "vertex")
    assert code == 0
    assert err.count("warning:") == 1 and "no API key: set GOOGLE_CLOUD_API_KEY" in err
    assert sources["vertex"].requests == [] and not pricing.cache_path().exists()
    assert "(unchanged)" in out


def test_a_chosen_region_is_priced_there(sources, capsys):
    code, out, _ = refresh(capsys, "--cloud", "azure", "--region", "azure=westeurope", "--json")
    assert code == 0
    table = cached()
    assert table["sources"]["azure"]["region"] == "westeurope"
    assert {n: e["usd_per_hour"] for n, e in table["prices"].items()} == {
        "Standard_NC4as_T4_v3": 0.6}
    assert sources["sagemaker"].requests == [] and sources["vertex"].requests == []


@pytest.mark.parametrize("args, message", [
    (["--cloud", "gcp"], "Invalid value for '--cloud'"),
    (["--region", "azure"], "is not CLOUD=REGION"),
    (["--region", "gcp=us"], "unknown cloud 'gcp'"),
    (["--region", "azure=east us'"], "is not a region name"),
])
def test_bad_input_is_one_line_and_exit_2(sources, capsys, args, message):
    code, out, err = refresh(capsys, *args)
    assert code == 2 and message in err and out == ""
    assert all(not s.requests for s in sources.values())


def test_a_corrupt_or_old_cache_is_one_warning_and_the_shipped_table(sources, capsys):
    path = pricing.cache_path()
    path.parent.mkdir(parents=True)
    for text in ("{not json", json.dumps({"sources": {}, "prices": {}})):
        path.write_text(text)
        table = price_table()
        assert len(table["warnings"]) == 1 and "ignored the price cache" in table["warnings"][0]
        assert "Warning: ignored the price cache" in table["about"]
        assert table["prices"]["ml.g4dn.xlarge"]["source"]["label"].startswith("shipped")
    assert main(["prices", "show"]) == 0
    assert capsys.readouterr().err.count("warning:") == 1
    # a refresh rewrites it
    assert refresh(capsys)[0] == 0 and price_table()["warnings"] == []


def test_the_types_to_price_are_the_vocabularys_and_the_shipped_tables():
    types = pricing.types_to_price()
    assert {"ml.g4dn.xlarge", "ml.g6.xlarge", "ml.p5.48xlarge", "ml.t2.medium"} <= set(
        types["sagemaker"])
    assert {"Standard_NC4as_T4_v3", "Standard_ND96isr_H100_v5"} <= set(types["azure"])
    assert {"n1-standard-4", "g2-standard-4", "NVIDIA_TESLA_T4", "NVIDIA_L4"} <= set(
        types["vertex"])
    assert "none" not in types["vertex"]
    assert set(pricing.VERTEX_MACHINES) >= {t for t in types["vertex"] if not t.isupper()}
    assert set(pricing.VERTEX_GPUS) >= {t for t in types["vertex"] if t.isupper()}


def test_gpu_keeps_to_what_the_fetched_region_offers(sources, capsys, monkeypatch):
    """After a refresh, -o gpu picks only types the region's price list lists: H100 (not
    listed in the recorded us-east-1) is one line naming the nearest it has; a listed one, or
    a region never fetched, passes."""
    from deployer import plugins

    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert refresh(capsys, "--cloud", "sagemaker", "--cloud", "vertex")[0] == 0
    code = main(["plan", "tests/repos/add_sub", "-t", "sagemaker", "-o", "gpu=H100",
                 "-o", "region=us-east-1"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"error: SageMaker has no H100 instance in us-east-1 (per the AWS Price List API "
        f"fetched {TODAY}); the nearest it has: A10G (ml.g5.xlarge) (pass -o gpu=A10G, or "
        "-o instance_type=TYPE)"]
    sagemaker, vertex = (plugins.load().get(name) for name in ("sagemaker-twin", "vertex"))
    with pytest.raises(Exception, match=r"no instance with 4 T4 GPUs in us-east-1 .*at most 1"):
        plugins.parse_options(sagemaker, {"gpu": "T4:4", "region": "us-east-1"})
    assert plugins.parse_options(sagemaker, {"gpu": "T4", "region": "us-east-1"})[
        "instance_type"] == "ml.g4dn.xlarge"
    assert plugins.parse_options(sagemaker, {"gpu": "H100", "region": "eu-west-1"})[
        "instance_type"] == "ml.p5.48xlarge"    # no price list fetched there: not checked
    assert plugins.parse_options(vertex, {"gpu": "L4"})["machine_type"] == "g2-standard-4"
    with pytest.raises(Exception, match="Vertex AI has no H100 instance in us-central1"):
        plugins.parse_options(vertex, {"gpu": "H100"})


@pytest.mark.parametrize("cloud", ["azure", "vertex"])
def test_an_answer_in_an_unknown_shape_is_one_warning_and_the_others_are_kept(
        sources, capsys, monkeypatch, cloud):
    monkeypatch.setattr(sources[cloud], "answer", lambda *_: (200, {}, ["not", "a", "page"]))
    code, out, err = refresh(capsys, "--json")
    assert code == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "answered in an unexpected shape" in warnings[0], err
    assert "kept the shipped prices" in warnings[0]
    assert sorted(cached()["sources"]) == sorted({"sagemaker", "azure", "vertex"} - {cloud})
