"""The endpoints file: what it accepts, what it refuses (a key written in it above all), and the
clients it makes, which reach a real server with the key from the named variable."""

from __future__ import annotations

import openai
import pytest

from ftp_assets.adapters.endpoints import EndpointsError, builtin_endpoints, parse_endpoints
from ftp_assets.resources import ServingEndpoints

VALID = """
endpoints:
  openai:
    base_url: https://llm.example.test/v1/
    api_key_env: OPENAI_API_KEY
    secret_name: ftp-assets-secrets
  vllm-qwen:
    base_url: http://vllm.example.test:8000/v1
    api_key_env: FTP_VLLM_API_KEY
    kind: vllm
"""


def test_a_valid_file_names_each_endpoint_with_its_key_variable_and_kind():
    endpoints = parse_endpoints(VALID)
    assert endpoints["openai"].base_url == "https://llm.example.test/v1"  # the trailing slash dropped
    assert (endpoints["openai"].kind, endpoints["openai"].secret_name) == ("openai", "ftp-assets-secrets")
    assert (endpoints["vllm-qwen"].api_key_env, endpoints["vllm-qwen"].kind) == ("FTP_VLLM_API_KEY", "vllm")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("endpoints: [a, b]", "must hold a mapping 'endpoints'"),
        ("endpoints:\n  x: {base_url: 'ftp://h/v1', api_key_env: K}", "needs a base_url starting with http"),
        ("endpoints:\n  x: {base_url: 'http://h/v1', api_key_env: 'not a name'}", "needs api_key_env"),
        ("endpoints:\n  x: {base_url: 'http://h/v1', api_key_env: K, kind: grpc}", "has kind 'grpc'"),
        ("endpoints:\n  Bad_Name: {base_url: 'http://h/v1', api_key_env: K}", "endpoint name 'Bad_Name'"),
        ("endpoints: {x: {base_url: 'http://h/v1'", "is not valid YAML"),
    ],
)
def test_an_invalid_file_is_refused_in_one_sentence(text, message):
    with pytest.raises(EndpointsError, match=message):
        parse_endpoints(text)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("base_url: http://user:pw@h/v1\n    api_key_env: K", "credentials in its base_url"),
        ("base_url: http://h/v1\n    api_key_env: FTP_POSTS_DB_URL", "another system's secret"),
        ("base_url: http://h/v1\n    api_key_env: MLFLOW_TRACKING_TOKEN", "another system's secret"),
    ],
)
def test_credentials_of_other_systems_are_refused(field, message):
    with pytest.raises(EndpointsError, match=message) as refused:
        parse_endpoints(f"endpoints:\n  x:\n    {field}\n")
    assert "pw" not in str(refused.value)


def test_a_key_written_into_the_file_is_refused_without_being_repeated():
    text = "endpoints:\n  x:\n    base_url: http://h/v1\n    api_key_env: K\n    api_key: sk-live-SECRET\n"
    with pytest.raises(EndpointsError) as refused:
        parse_endpoints(text)
    assert "unknown field(s) api_key" in str(refused.value) and "SECRET" not in str(refused.value)


def test_the_file_adds_to_and_replaces_the_builtin_endpoints(tmp_path):
    builtins = builtin_endpoints(openai_base_url="", serving_url="")
    assert builtins["openai"].base_url == "https://api.openai.com/v1"
    assert (builtins["self_hosted"].base_url, builtins["self_hosted"].kind) == ("http://127.0.0.1:8100/v1", "vllm")
    path = tmp_path / "endpoints.yaml"
    path.write_text(VALID)
    endpoints = ServingEndpoints(endpoints_file=str(path)).endpoints()
    assert set(endpoints) == {"openai", "self_hosted", "vllm-qwen"}
    assert endpoints["openai"].base_url == "https://llm.example.test/v1"


def test_a_client_reaches_the_endpoint_with_the_key_from_its_variable(local_openai, monkeypatch):
    serving = ServingEndpoints(openai_base_url=local_openai.base_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(EndpointsError, match="takes its key from OPENAI_API_KEY, which is not set"):
        serving.client("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with serving.client("openai") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
    monkeypatch.setenv("OPENAI_API_KEY", local_openai.api_key)
    with serving.client("openai") as client:
        assert client.models.list().data
    with pytest.raises(EndpointsError, match="No endpoint is named 'nope'"):
        serving.client("nope")
