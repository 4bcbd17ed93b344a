"""The OpenAPI document as a REST consumer meets it: a client generated from the live
document (openapi-python-client) builds without a warning, has one class per schema, and
parses every answer the service gives, errors included, to a model."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.support.processes import Service, clean_environ
from tests.support.settings import E2E_TOKEN

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def generated(service: Service, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("client")
    document = folder / "openapi.json"
    document.write_bytes(httpx.get(f"{service.base}/openapi.json").content)
    tools = Path(sys.executable).parent  # the generator and the ruff it formats with
    result = subprocess.run(
        [
            tools / "openapi-python-client", "generate", "--meta", "none",
            "--path", document, "--output-path", folder / "api_client",
        ],
        capture_output=True, text=True, timeout=120, check=False, cwd=folder,
        env=clean_environ(PATH=f"{tools}{os.pathsep}{os.environ['PATH']}"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr, folder


@pytest.fixture(scope="module")
def client_package(generated: tuple[str, Path]) -> ModuleType:
    sys.path.insert(0, str(generated[1]))
    try:
        return importlib.import_module("api_client")
    finally:
        sys.path.remove(str(generated[1]))


def test_the_client_builds_without_a_warning_and_one_class_per_schema(
    generated: tuple[str, Path],
) -> None:
    output, folder = generated
    models = sorted(path.stem for path in (folder / "api_client" / "models").glob("*.py"))

    assert "Warning" not in output, output
    assert "Cannot parse" not in output, output
    assert [name for name in models if name.endswith("user")] == ["user"]
    assert [name for name in models if name.endswith("problem")] == [
        "problem",
        "upstream_problem",
        "validation_problem",
    ]
    operations = sorted(path.stem for path in (folder / "api_client" / "api").rglob("*.py"))
    assert {"list_users", "create_user", "get_user", "patch_user", "get_post"} <= set(operations)


def test_every_answer_parses_to_a_model(service: Service, client_package: ModuleType) -> None:
    api = importlib.import_module("api_client.api.users")
    posts = importlib.import_module("api_client.api.posts")
    models = importlib.import_module("api_client.models")
    create = importlib.import_module(f"{api.__name__}.create_user")
    get_user = importlib.import_module(f"{api.__name__}.get_user")
    patch = importlib.import_module(f"{api.__name__}.patch_user")
    list_users = importlib.import_module(f"{api.__name__}.list_users")
    get_post = importlib.import_module(f"{posts.__name__}.get_post")
    with (
        client_package.AuthenticatedClient(base_url=service.base, token=E2E_TOKEN) as token,
        client_package.Client(base_url=service.base) as anonymous,
    ):
        email = "generated-client@example.com"
        stranger = models.UserCreate(name="x", email="x@example.com")
        rename = models.UserPatch(name="G")

        created = create.sync(client=token, body=models.UserCreate(name="Gen", email=email))
        answers = {
            "created": created,
            "read": get_user.sync(client=anonymous, user_id=created.id),
            "page": list_users.sync(client=anonymous, limit=1),
            "unauthorised": create.sync(client=anonymous, body=stranger),
            "taken": create.sync(client=token, body=models.UserCreate(name="Gen", email=email)),
            "invalid": list_users.sync(client=anonymous, limit=0),
            "missing": get_user.sync(client=anonymous, user_id=10**12),
            "patched": patch.sync(client=token, user_id=created.id, body=rename),
            "post": get_post.sync(client=anonymous, post_id=7),
            "no post": get_post.sync(client=anonymous, post_id=1000),
        }  # fmt: skip

    kinds = {name: type(answer).__name__ for name, answer in answers.items()}
    assert kinds == {
        "created": "User",
        "read": "User",
        "page": "UserPage",
        "unauthorised": "Problem",
        "taken": "Problem",
        "invalid": "ValidationProblem",
        "missing": "Problem",
        "patched": "User",
        "post": "Post",
        "no post": "Problem",
    }
    assert (answers["taken"].status, answers["missing"].status) == (409, 404)
    assert answers["patched"].name == "G"
