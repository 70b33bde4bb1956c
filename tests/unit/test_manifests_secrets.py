"""The HF token never appears in rendered YAML/JSON, exceptions or repr; only the apply path's explicit
``include_secret_value=True`` puts it in the Secret object, whose repr stays redacted."""

from __future__ import annotations

import json
import os
import secrets
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from manifests.errors import ManifestError, SecretSourceError
from manifests.render import TOKEN_PLACEHOLDER, render_json, render_objects, render_yaml
from manifests.secrets import read_hf_token
from manifests.spec import build_spec

ENV_NAME = "SERVEDECK_TEST_HF_TOKEN"


@pytest.fixture
def token_in_env() -> Iterator[str]:
    alphabet = string.ascii_letters + string.digits
    token = "hf_" + "".join(secrets.choice(alphabet) for _ in range(34))
    os.environ[ENV_NAME] = token
    try:
        yield token
    finally:
        del os.environ[ENV_NAME]


def test_exports_carry_the_placeholder_never_the_token(token_in_env: str) -> None:
    spec = build_spec(model="google/gemma-3-27b-it", gpu="h100", hf_token_env=ENV_NAME)
    for text in (render_yaml(spec), render_json(spec), repr(render_objects(spec)), repr(spec), str(spec)):
        assert token_in_env not in text
    assert TOKEN_PLACEHOLDER in render_yaml(spec)


def test_apply_path_gets_the_value_only_in_the_secret_and_repr_stays_redacted(token_in_env: str) -> None:
    spec = build_spec(model="google/gemma-3-27b-it", gpu="h100", hf_token_env=ENV_NAME)
    token = read_hf_token(spec, os.environ)
    assert token_in_env not in repr(token) and token_in_env not in str(token)
    objects = render_objects(spec, include_secret_value=True, hf_token=token)
    secret = next(o for o in objects if o["kind"] == "Secret")
    assert secret["stringData"]["token"] == token_in_env
    # The API body is JSON: the value is there for the server and nowhere else.
    bodies = {o["kind"]: json.dumps(o) for o in objects}
    assert token_in_env in bodies["Secret"]
    assert all(token_in_env not in body for kind, body in bodies.items() if kind != "Secret")
    for text in (
        repr(objects),
        str(objects),
        repr(secret),
        str(secret),
        repr(secret["stringData"]),
        f"{secret}",
    ):
        assert token_in_env not in text
    with pytest.raises(yaml.representer.RepresenterError):
        yaml.safe_dump(secret)  # the redacted Secret cannot be exported by accident


def test_token_file_source(tmp_path: Path, token_in_env: str) -> None:
    token_file = tmp_path / "hf"
    token_file.write_text(token_in_env + "\n", encoding="utf-8")
    spec = build_spec(model="google/gemma-3-27b-it", gpu="h100", hf_token_file=str(token_file))
    assert spec.hf_token_env is None
    assert read_hf_token(spec, {}).get_secret_value() == token_in_env
    assert token_in_env not in render_yaml(spec)
    assert str(token_file) in render_yaml(spec)  # the path is shown, so the user knows where it comes from


def test_token_source_errors_are_one_line_without_the_value(tmp_path: Path, token_in_env: str) -> None:
    spec = build_spec(model="google/gemma-3-27b-it", gpu="h100", hf_token_env="SERVEDECK_TEST_UNSET_TOKEN")
    with pytest.raises(SecretSourceError, match="env var SERVEDECK_TEST_UNSET_TOKEN is not set"):
        read_hf_token(spec, {})
    two_words = tmp_path / "two"
    two_words.write_text(f"{token_in_env} {token_in_env}", encoding="utf-8")
    errors: list[ManifestError] = []
    for path in (tmp_path / "missing", two_words, tmp_path / "empty"):
        if path.name == "empty":
            path.write_text("\n", encoding="utf-8")
        file_spec = build_spec(model="google/gemma-3-27b-it", gpu="h100", hf_token_file=str(path))
        with pytest.raises(SecretSourceError) as caught:
            read_hf_token(file_spec, {})
        errors.append(caught.value)
    messages = [str(err) for err in errors]
    assert (
        "does not exist" in messages[0] and "more than one word" in messages[1] and "is empty" in messages[2]
    )
    for message in messages:
        assert "\n" not in message and token_in_env not in message


def test_the_value_must_be_asked_for_explicitly(token_in_env: str) -> None:
    spec = build_spec(model="google/gemma-3-27b-it", gpu="h100", hf_token_env=ENV_NAME)
    with pytest.raises(SecretSourceError, match="needs the token"):
        render_objects(spec, include_secret_value=True)
    with pytest.raises(SecretSourceError, match="without include_secret_value"):
        render_objects(spec, hf_token=SecretStr(token_in_env))
    public = build_spec(model="google/gemma-3-27b-it", gpu="h100", hf_token_env=None)
    with pytest.raises(SecretSourceError, match="renders no Secret") as caught:
        render_objects(public, include_secret_value=True, hf_token=SecretStr(token_in_env))
    assert token_in_env not in str(caught.value)
