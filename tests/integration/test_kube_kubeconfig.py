"""Kubeconfig discovery, contexts and client construction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backends.kube.client import KubeClient
from backends.kube.errors import KubeconfigError
from backends.kube.kubeconfig import load_kubeconfig
from tests.fakes.kube_api import FakeKubeApi

pytestmark = pytest.mark.timeout(30)


def test_contexts_current_and_servers(tmp_path: Path) -> None:
    with FakeKubeApi() as api:
        path = api.write_kubeconfig(
            tmp_path / "config", namespace="servedeck", extra_contexts={"gke-prod": "https://34.1.2.3"}
        )
        config = load_kubeconfig(path)
        assert config.current_context == "fake"
        assert [(c.name, c.namespace, c.server) for c in config.contexts] == [
            ("fake", "servedeck", api.url),
            ("gke-prod", None, "https://34.1.2.3"),
        ]
        with KubeClient.connect(str(path), "fake") as client:
            assert client.default_namespace == "servedeck"
            assert client.server == api.url
            assert client.list_objects("Namespace") == []


def test_kubeconfig_env_is_a_path_list_where_the_first_definition_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeKubeApi() as api:
        first = api.write_kubeconfig(tmp_path / "first", context="dev", namespace="a")
        second = api.write_kubeconfig(
            tmp_path / "second", context="dev", namespace="b", extra_contexts={"ci": "http://127.0.0.1:9"}
        )
        monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "absent"), str(first), str(second)]))
        config = load_kubeconfig()
        assert config.paths == [first, second]
        assert config.context(None).namespace == "a"
        assert config.context("ci").server == "http://127.0.0.1:9"
        with KubeClient.connect() as client:
            assert client.context.name == "dev"
            assert client.list_objects("Pod", "a") == []


def test_no_kubeconfig_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope" / "config"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    with pytest.raises(KubeconfigError) as caught:
        KubeClient.connect()
    assert str(caught.value) == (
        f"no kubeconfig found at {missing}; set KUBECONFIG or pass --kubeconfig PATH "
        "(for GKE: gcloud container clusters get-credentials CLUSTER --region REGION)"
    )


def test_default_location_is_home_kube_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(
        KubeconfigError, match=rf"no kubeconfig found at {tmp_path}/.kube/config; set KUBECONFIG"
    ):
        load_kubeconfig()


def test_unknown_context_names_the_known_ones(tmp_path: Path) -> None:
    with FakeKubeApi() as api:
        path = api.write_kubeconfig(tmp_path / "config", extra_contexts={"gke-prod": "https://34.1.2.3"})
    with pytest.raises(KubeconfigError) as caught:
        KubeClient.connect(str(path), "staging")
    assert str(caught.value) == f"context 'staging' is not in {path}; contexts: fake, gke-prod"


def test_broken_kubeconfigs(tmp_path: Path) -> None:
    not_yaml = tmp_path / "not-yaml"
    not_yaml.write_text("clusters: [unclosed\n")
    with pytest.raises(KubeconfigError, match=rf"kubeconfig {not_yaml} is not valid YAML"):
        load_kubeconfig(not_yaml)

    no_current = tmp_path / "no-current"
    no_current.write_text("apiVersion: v1\nkind: Config\ncontexts: []\n")
    with pytest.raises(KubeconfigError, match="sets no current-context; pass --context NAME"):
        KubeClient.connect(str(no_current))

    dangling = tmp_path / "dangling"
    dangling.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "contexts:\n- name: x\n  context: {cluster: gone, user: u}\n"
    )
    with pytest.raises(
        KubeconfigError, match=r"kubeconfig context 'x' cannot be used: .*\(kubectl config view\)$"
    ):
        KubeClient.connect(str(dangling))
