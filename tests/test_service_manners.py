"""The service's manners (issue 26): /metrics parsed by the Prometheus client's own parser, the JSON
access log, a body without a JSON Content-Type, the answer object over HTTP, and the container image
(built and asked where a container runtime exists). Real uvicorn on loopback, real model."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT
from test_server import running


@pytest.fixture
def served(faq_index, encoder):
    from search.server.app import create_app

    with running(create_app(faq_index, encoder=encoder, access_log="json")) as http:
        yield http


def samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} of a Prometheus text exposition."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_parse_and_count_a_request(served):
    before = samples(served.get("/metrics").text)
    search = {"question": ["I forgot my password", "What is the capital of Australia?"], "min_score": 0.5}
    assert served.post("/search", json=search).status_code == 200
    response = served.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = samples(response.text)
    counted = ("bertdex_requests_total", frozenset({"method": "POST", "route": "/search", "status": "200"}.items()))
    assert before.get(counted, 0) == 0 and after[counted] == 1
    assert after[("bertdex_request_seconds_count", frozenset({"route": "/search"}.items()))] == 1
    assert after[("bertdex_questions_total", frozenset({"answered": "yes"}.items()))] == 1
    assert after[("bertdex_questions_total", frozenset({"answered": "no"}.items()))] == 1
    assert after[("bertdex_index_documents", frozenset())] == 50 and after[("bertdex_index_generation", frozenset())] >= 1
    assert after[("bertdex_index_bytes", frozenset())] > 0
    served.get("/documents/en-001")
    routes = {dict(labels).get("route") for name, labels in samples(served.get("/metrics").text)
              if name == "bertdex_requests_total"}
    assert "/documents/{key}" in routes and "/documents/en-001" not in routes  # templates, never raw paths


def test_the_json_access_log_is_one_object_per_request(served, caplog):
    def logged_lines():
        return [record.getMessage() for record in caplog.records if record.name == "bertdex.access"]

    with caplog.at_level(logging.INFO, logger="bertdex.access"):
        served.get("/health")
        deadline = time.monotonic() + 10  # the server's thread logs once the response is sent: the client
        while not logged_lines() and time.monotonic() < deadline:  # may read it first (a loaded machine did)
            time.sleep(0.01)
    (line,) = logged_lines()
    logged = json.loads(line)
    assert (logged["method"], logged["path"], logged["status"]) == ("GET", "/health", 200)
    assert logged["ms"] >= 0 and logged["client"] == "127.0.0.1" and logged["time"].endswith("Z")


def test_a_body_without_a_json_content_type_is_told_so(served):
    body = json.dumps({"question": "refund"}).encode()
    response = served.post("/search", content=body)  # httpx sends no Content-Type for raw content
    assert response.status_code == 415
    assert response.json() == {"error": "send the body as JSON with the header Content-Type: application/json "
                                        "(none was sent)", "status": 415}
    form = served.post("/search", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and "'application/x-www-form-urlencoded' was sent" in form.json()["error"]
    assert served.post("/search", content=body, headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200


def test_http_says_why_a_filtered_question_got_nothing(served):
    result = served.post("/search", json={"question": "refund", "filters": {"category": "Billing"}}).json()["results"][0]
    assert (result["answered"], result["reason"]) == (False, "filter_matched_nothing")
    assert result["why"].startswith("no entry with category=Billing (values: account, app, billing")


# -- the container --------------------------------------------------------------------------------------


def container_runtime() -> str | None:
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if path and subprocess.run([path, "info"], capture_output=True, timeout=60).returncode == 0:
            return path
    return None


RUNTIME = container_runtime()


@pytest.mark.slow
@pytest.mark.skipif(RUNTIME is None, reason="no container runtime here (docker or podman with a running daemon)")
def test_the_container_builds_and_answers(tmp_path):
    tag = f"bertdex-test-{uuid.uuid4().hex[:8]}"
    subprocess.run([RUNTIME, "build", "-t", tag, str(ROOT)], check=True, timeout=3600)
    name = f"{tag}-run"
    try:
        subprocess.run([RUNTIME, "run", "-d", "--name", name, "-p", "127.0.0.1::8000", tag], check=True, timeout=120)
        port = subprocess.run([RUNTIME, "port", name, "8000"], capture_output=True, text=True, check=True).stdout
        base = "http://" + port.splitlines()[0].strip().replace("0.0.0.0", "127.0.0.1")
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the container never answered /health"
            time.sleep(2)
        found = httpx.post(f"{base}/search", json={"question": "I forgot my password", "k": 1}, timeout=60).json()
        assert found["results"][0]["hits"][0]["group"] == "g-password-reset"
        user = subprocess.run([RUNTIME, "exec", name, "id", "-u"], capture_output=True, text=True, check=True).stdout
        assert user.strip() != "0"  # not root
    finally:
        subprocess.run([RUNTIME, "rm", "-f", name], capture_output=True)
        subprocess.run([RUNTIME, "rmi", "-f", tag], capture_output=True)


def test_the_dockerfile_pins_cpu_torch_and_runs_unprivileged():
    """Where no runtime exists, at least what the image is told to be."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    assert "\nUSER bertdex" in text and "HEALTHCHECK" in text and "resolve_model_folder" in text
    unit = (ROOT / "docs" / "bertdex.service").read_text(encoding="utf-8")
    assert "ExecStart=" in unit and "User=bertdex" in unit
