"""An in-cluster bench keeps the API key out of what it prints and writes, as a local one does
(issue 9, "Secrets"): the pods run the real worker against a server that quotes the key back."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.kube_jobs import FakeJobController, exec_worker
from tests.fakes.openai_like_server import FakeServer, FakeServerConfig
from tui.cli import main

pytestmark = pytest.mark.timeout(120)

NS = "servedeck"
# No secret-looking pattern matches it: only "mask the value that was sent" hides it.
CANARY = "canary-7d2e91b4c3f05a68"
CANARY_ENV = "SERVEDECK_TEST_INCLUSTER_CRED"


def _stand_in_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "servedeck-0.1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: servedeck\nVersion: 0.1.0\nRequires-Dist: pydantic>=2.7\n",
        )
    return path


def test_a_key_quoted_back_by_the_server_is_masked_in_the_output_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CANARY_ENV, CANARY)
    monkeypatch.setenv("SERVEDECK_DATA_DIR", str(tmp_path / "data"))
    out, csv = tmp_path / "result.json", tmp_path / "result.csv"
    wheel = _stand_in_wheel(tmp_path / "servedeck-0.1.0-py3-none-any.whl")
    with (
        FakeKubeApi() as api,
        FakeServer(FakeServerConfig(reject_key_echoing=True)) as server,
        FakeJobController(api, exec_worker),
    ):
        api.create_namespace(NS)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        code = main(
            ["bench", "--in-cluster", "--kubeconfig", str(kubeconfig), "--target", server.url,
             "--model", "fake-model", "--api-key-env", CANARY_ENV, "--concurrency", "2",
             "--dataset", "random", "--random-input-len", "16", "--output-len", "4", "--num-prompts", "4",
             "--plain", "--start-delay", "0.2", "--loadgen-wheel", str(wheel),
             "--out", str(out), "--csv", str(csv)]
        )  # fmt: skip
        sent = [auth for _, path, auth in server.requests if "completions" in path]
    captured = capsys.readouterr()
    assert code == 1, captured.err  # every request was refused
    assert sent and all(auth == f"Bearer {CANARY}" for auth in sent)  # the pods really sent the key
    written = out.read_text()
    level = json.loads(written)["levels"][0]
    assert level["failed"] == 4
    assert "Incorrect API key provided" in written  # the reason is kept, the key is not
    for where, content in (
        ("--out", written),
        ("--csv", csv.read_text()),
        ("output", captured.out + captured.err),
        ("the store", b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()).decode(
            "utf-8", "replace"
        )),
    ):  # fmt: skip
        assert CANARY not in content, where
