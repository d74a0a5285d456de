"""Template lifecycle and scoped access end to end: one real worker on the real broker.

Drafts, publish, history, restore, clone, export and import, typed parameters in a preview,
and the four scopes, each through HTTP as an operator's script (or the console) calls them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.support import (
    SCOPED_TOKENS,
    SEED_MAIL,
    SEED_SMS,
    TOKEN,
    Api,
    Worker,
    unique,
    write_tokens_file,
)
from tests.integration.test_templates_api import assert_error, start_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    base = tmp_path_factory.mktemp("lifecycle-worker")
    tokens = write_tokens_file(base / "tokens.json")
    # On uvloop (EVENT_LOOP's other choice), so that it is run by a whole module of tests.
    w = start_worker(kafka_bootstrap, base, NOTIFY_API_TOKENS_FILE=str(tokens), EVENT_LOOP="uvloop")
    yield w
    w.stop()
    log = w.log_path.read_text(errors="replace")
    assert "unhandled error" not in log, w.log_tail(80)
    for token, _ in SCOPED_TOKENS.values():
        assert token not in log
    assert TOKEN not in log
    assert "by editor answered" in log, "template changes are logged under the token's name"
    assert "worker running on the uvloop event loop" in log


def api_as(worker: Worker, name: str) -> Api:
    return Api(worker.url, SCOPED_TOKENS[name][0])


@pytest.fixture
def admin(worker: Worker) -> Api:
    return Api(worker.url)


@pytest.fixture
def editor(worker: Worker) -> Api:
    return api_as(worker, "editor")


def sms(name: str, body: str = "Your code [(${otpValue})]") -> dict[str, Any]:
    return {**copy.deepcopy(SEED_SMS), "name": name, "body": body}


async def test_whoami_names_the_token_and_its_scopes(worker: Worker, admin: Api):
    assert await admin.call("GET", "/api/whoami") == (200, {"name": "default", "scopes": ["admin"]})
    status, body = await api_as(worker, "reader").call("GET", "/api/whoami")
    assert (status, body) == (200, {"name": "reader", "scopes": ["read"]})
    status, body = await Api(worker.url, "nope").call("GET", "/api/whoami")
    assert_error(status, body, 401, field="Authorization")


async def test_each_scope_allows_its_routes_and_refuses_the_rest(worker: Worker, admin: Api):
    name = unique("scoped")
    assert (await admin.call("POST", "/api/template", sms(name)))[0] == 201
    reader, editor, importer = (api_as(worker, n) for n in ("reader", "editor", "importer"))
    assert (await reader.call("GET", f"/api/template/{name}"))[0] == 200
    assert (await reader.call("GET", f"/api/template/{name}/versions"))[0] == 200
    assert (await reader.call("GET", f"/api/templates/export?name={name}"))[0] == 200
    assert (await reader.call("POST", f"/api/template/{name}/preview", {"data": {}}))[0] == 200
    refusals = [
        (reader, "PUT", f"/api/template/{name}", sms(name), "edit"),
        (reader, "POST", "/api/template", sms(unique("r")), "edit"),
        (reader, "DELETE", f"/api/template/{name}", None, "edit"),
        (reader, "POST", f"/api/template/{name}/publish", None, "edit"),
        (reader, "POST", "/api/templates/import", {"templates": []}, "import"),
        (editor, "POST", "/api/templates/import", {"templates": []}, "import"),
        (importer, "PUT", f"/api/template/{name}", sms(name), "edit"),
        (editor, "GET", "/api/otp/someone", None, "admin"),
        (editor, "GET", "/api/notifications", None, "admin"),
    ]
    for caller, method, path, body, scope in refusals:
        status, answer = await caller.call(method, path, body)
        assert_error(status, answer, 403, field="Authorization")
        assert f"'{scope}' scope" in answer["error"], (method, path, answer)
    status, current = await admin.call("GET", f"/api/template/{name}")
    assert status == 200 and current["version"] == 1, "a refused write changed nothing"
    assert (await editor.call("PUT", f"/api/template/{name}", sms(name)))[0] == 200
    assert (await importer.call("POST", "/api/templates/import", {"templates": []}))[0] == 200


async def test_draft_publish_history_restore(admin: Api, editor: Api):
    name = unique("life")
    v1_body = "Code [(${otpValue})]"
    status, v1 = await editor.call("POST", "/api/template", sms(name, v1_body))
    assert status == 201 and v1["version"] == 1
    draft_body = "Draft code [(${otpValue})]"
    status, draft = await editor.call(
        "PUT", f"/api/template/{name}?draft=true", sms(name, draft_body)
    )
    assert status == 200 and draft["body"] == draft_body
    assert draft["savedBy"] == "editor" and draft["baseVersion"] == 1
    status, published = await admin.call("GET", f"/api/template/{name}")
    assert (status, published["body"], published["version"]) == (200, v1_body, 1)
    status, listed = await admin.call("GET", f"/api/template?name={name}")
    assert [t["hasDraft"] for t in listed["items"]] == [True]
    status, drafts = await admin.call("GET", f"/api/template?status=draft&name={name}")
    assert drafts["count"] == 1
    status, preview = await admin.call("POST", f"/api/template/{name}/preview?draft=true", {})
    assert status == 200 and preview["body"] == f"Draft code {preview['otpValue']}"
    status, preview = await admin.call("POST", f"/api/template/{name}/preview", {})
    assert preview["body"] == f"Code {preview['otpValue']}", "the published version previews"

    status, v2 = await editor.call("POST", f"/api/template/{name}/publish")
    assert status == 200 and v2["version"] == 2 and v2["body"] == draft_body
    assert (await admin.call("GET", f"/api/template/{name}?draft=true"))[0] == 404
    status, again = await editor.call("POST", f"/api/template/{name}/publish")
    assert_error(status, again, 409, field="draft")

    status, history = await admin.call("GET", f"/api/template/{name}/versions")
    assert status == 200 and history["count"] == 2
    assert [(v["version"], v["changedBy"], v["current"]) for v in history["items"]] == [
        (2, "editor", True),
        (1, "editor", False),
    ]
    assert history["items"][0]["summary"] == "published draft: body changed"
    status, old = await admin.call("GET", f"/api/template/{name}/versions/1")
    assert status == 200 and old["body"] == v1_body and old["current"] is False

    status, v3 = await editor.call("POST", f"/api/template/{name}/versions/1/restore")
    assert status == 200 and v3["version"] == 3 and v3["body"] == v1_body
    status, now = await admin.call("GET", f"/api/template/{name}")
    assert (now["version"], now["body"]) == (3, v1_body)
    status, history = await admin.call("GET", f"/api/template/{name}/versions")
    assert history["items"][0]["summary"] == "restored version 1"
    for path, status_wanted in (
        (f"/api/template/{name}/versions/9", 404),
        (f"/api/template/{name}/versions/x", 400),
        (f"/api/template/{name}/versions/0", 400),
        (f"/api/template/{name}/versions/%C2%B2", 400),  # superscript two
        (f"/api/template/{name}/versions/%D9%A1", 400),  # Arabic-Indic one
        (f"/api/template/{unique('none')}/versions", 404),
    ):
        status, body = await admin.call("GET", path)
        assert_error(status, body, status_wanted)


async def test_discard_a_draft(admin: Api):
    name = unique("discard")
    await admin.call("POST", "/api/template", sms(name))
    await admin.call("PUT", f"/api/template/{name}?draft=true", sms(name, "D [(${otpValue})]"))
    assert (await admin.call("DELETE", f"/api/template/{name}?draft=true"))[0] == 204
    status, body = await admin.call("DELETE", f"/api/template/{name}?draft=true")
    assert_error(status, body, 404)
    assert (await admin.call("GET", f"/api/template/{name}"))[0] == 200, "the template stays"
    status, body = await admin.call("PUT", f"/api/template/{unique('x')}?draft=true", sms("x"))
    assert_error(status, body, 404)


async def test_clone(admin: Api):
    name = unique("clone")
    await admin.call("POST", "/api/template", {**copy.deepcopy(SEED_MAIL), "name": name})
    status, copy_ = await admin.call("POST", f"/api/template/{name}/clone", {"language": "ro"})
    assert status == 201 and copy_["version"] == 1
    assert (copy_["name"], copy_["language"]) == (name, "ro")
    assert copy_["body"] == SEED_MAIL["body"]
    status, history = await admin.call("GET", f"/api/template/{name}/versions?language=ro")
    assert history["items"][0]["summary"] == f"cloned from {name} (en)"
    status, body = await admin.call("POST", f"/api/template/{name}/clone", {"language": "ro"})
    assert_error(status, body, 409)
    status, body = await admin.call("POST", f"/api/template/{name}/clone", {})
    assert_error(status, body, 400, field="name")
    status, body = await admin.call("POST", f"/api/template/{name}/clone", {"name": "a b"})
    assert_error(status, body, 400, field="name")
    status, body = await admin.call("POST", f"/api/template/{name}/clone", {"language": False})
    assert_error(status, body, 400, field="language")


async def test_export_then_import(admin: Api):
    tag = unique("io")
    names = [f"{tag}-a", f"{tag}-b"]
    for name in names:
        await admin.call("POST", "/api/template", sms(name))
    status, document = await admin.call("GET", f"/api/templates/export?name={names[0]}")
    assert status == 200 and document["format"] == "faust-otp.templates"
    assert [t["name"] for t in document["templates"]] == [names[0]]
    assert "version" not in document["templates"][0]
    status, everything = await admin.call("GET", "/api/templates/export")
    mine = [t for t in everything["templates"] if t["name"].startswith(tag)]
    assert [t["name"] for t in mine] == names

    await admin.call("DELETE", f"/api/template/{names[1]}")
    changed = {**mine[0], "body": "Changed [(${otpValue})]"}
    new = {**mine[0], "name": f"{tag}-c"}
    bad = {**mine[0], "name": f"{tag}-d", "body": "[(${otpValue)]"}
    request = {**everything, "templates": [changed, mine[1], new, bad]}
    status, plan = await admin.call("POST", "/api/templates/import?dryRun=true", request)
    assert status == 200 and plan["dryRun"] is True
    assert [r["action"] for r in plan["results"]] == ["update", "create", "create", "refused"]
    assert plan["results"][3]["details"][0]["field"].startswith("templates[3].")
    assert plan["counts"] == {"create": 2, "update": 1, "unchanged": 0, "refused": 1}

    status, refused = await admin.call("POST", "/api/templates/import", request)
    assert status == 400 and "nothing imported" in refused["error"]
    assert (await admin.call("GET", f"/api/template/{tag}-c"))[0] == 404, "nothing applied"

    request["templates"] = [changed, mine[1], new]
    status, done = await admin.call("POST", "/api/templates/import", request)
    assert status == 200 and done["counts"] == {
        "create": 2,
        "update": 1,
        "unchanged": 0,
        "refused": 0,
    }
    assert [r.get("version") for r in done["results"]] == [2, 1, 1]
    status, now = await admin.call("GET", f"/api/template/{names[0]}")
    assert now["body"] == "Changed [(${otpValue})]" and now["version"] == 2
    status, again = await admin.call("POST", "/api/templates/import", request)
    assert [r["action"] for r in again["results"]] == ["unchanged"] * 3
    for body in (
        [],
        {"templates": "x"},
        {"format": "other", "templates": []},
        {"formatVersion": True, "templates": []},
    ):
        status, answer = await admin.call("POST", "/api/templates/import", body)
        assert_error(status, answer, 400)


async def test_preview_of_unsaved_content_and_typed_parameters(admin: Api):
    template = {
        **copy.deepcopy(SEED_SMS),
        "name": unique("typed"),
        "body": "Pay [(${amount})]: [(${otpValue})]",
        "params": [{"key": "amount", "mandatory": True, "type": "NUMBER"}],
    }
    status, shown = await admin.call(
        "POST", "/api/preview", {"template": template, "data": {"amount": 12}}
    )
    assert (
        status == 200
        and shown["body"] == f"Pay 12: {shown['otpValue']}"
        and shown["version"] is None
    )
    status, body = await admin.call(
        "POST", "/api/preview", {"template": template, "data": {"amount": "x"}}
    )
    assert_error(status, body, 400, field="data.amount")
    status, body = await admin.call("POST", "/api/preview", {"template": {**template, "body": ""}})
    assert_error(status, body, 400, field="template.body")
    status, body = await admin.call("POST", "/api/preview", ["x"])
    assert_error(status, body, 400)
    bad_type = {**template, "params": [{"key": "amount", "type": "MONEY"}]}
    status, body = await admin.call("POST", "/api/template", bad_type)
    assert_error(status, body, 400, field="params[0].type")
