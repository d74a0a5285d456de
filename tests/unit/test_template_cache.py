"""The template read model: the changelog in order, and this worker's own writes ahead of it."""

from __future__ import annotations

from app import codec
from app.core.templates import template_key
from tables.template_cache import TemplateCache

KEY = template_key("otpMail", "en")


def cache() -> TemplateCache:
    return TemplateCache("127.0.0.1:1", "templates-changelog", 4, "en", "template-results")


def template(version: int, subject: str = "s") -> dict:
    return {
        "name": "otpMail",
        "language": "en",
        "type": "MAIL",
        "subject": subject,
        "body": "<p th:text='${otpValue}'></p>",
        "params": [],
        "version": version,
    }


def record(version: int, subject: str = "s") -> bytes:
    return codec.dumps({**template(version, subject), "_requestId": "r"})


def versions(c: TemplateCache) -> list[int]:
    return [t["version"] for t in c.all()]


def test_changelog_in_order_and_private_fields_dropped() -> None:
    c = cache()
    c.apply(KEY, record(1))
    c.apply(KEY, record(2, "new"))
    [stored] = c.all()
    assert stored["version"] == 2 and stored["subject"] == "new"
    assert "_requestId" not in stored
    c.apply(KEY, None)
    assert c.all() == []


def test_own_write_is_not_undone_by_the_changelog_catching_up() -> None:
    c = cache()
    c.apply(KEY, record(1))
    c.apply_own(KEY, template(2, "mine"))
    c.apply(KEY, record(1))  # still in flight when the view applied v2
    assert versions(c) == [2]
    c.apply(KEY, record(2, "mine"))
    assert c.get("otpMail", "en").data["subject"] == "mine"


def test_own_delete_is_not_undone_by_an_older_record_in_flight() -> None:
    c = cache()
    c.apply(KEY, record(1))
    c.apply_own(KEY, template(2))
    c.apply_own(KEY, None)  # the view deleted v2 before the changelog delivered it
    c.apply(KEY, record(2))  # the changelog catches up: v2, then the tombstone
    assert c.all() == []
    c.apply(KEY, None)
    assert c.all() == []


def test_recreate_after_delete() -> None:
    c = cache()
    c.apply(KEY, record(1))
    c.apply(KEY, record(2))
    c.apply_own(KEY, None)
    c.apply_own(KEY, template(1, "again"))  # a new template starts at version 1
    assert c.get("otpMail", "en").data["subject"] == "again"
    c.apply(KEY, None)  # the delete's tombstone
    c.apply(KEY, record(1, "again"))  # the re-create's record, after the tombstone
    assert c.get("otpMail", "en").data["subject"] == "again"


def test_delete_before_the_map_caught_up_skips_everything_until_the_tombstone() -> None:
    c = cache()
    c.apply_own(KEY, None)
    c.apply(KEY, record(7))
    assert c.all() == []
    c.apply(KEY, None)
    c.apply(KEY, record(1, "new"))
    assert versions(c) == [1]


def test_sends_use_the_published_version_while_a_draft_waits() -> None:
    c = cache()
    c.apply(KEY, record(1))
    published = c.resolve("otpMail", "en")
    draft = {**template(1, "draft subject"), "savedBy": "editor", "baseVersion": 1}
    c.apply(KEY, codec.dumps({**template(1), "_draft": draft}))
    entry = c.resolve("otpMail", "en")
    assert entry is not None and published is not None
    assert entry.data["subject"] == "s" and entry.compiled is published.compiled
    assert entry.draft is not None and entry.draft["subject"] == "draft subject"
    assert "_draft" not in entry.data
    c.apply_own(KEY, {**template(2, "draft subject")}, None)  # published
    entry = c.resolve("otpMail", "en")
    assert entry is not None and entry.data["subject"] == "draft subject" and entry.draft is None


def test_an_older_draft_record_does_not_replace_a_newer_one() -> None:
    """Two workers save drafts one after the other: whichever order this worker learns of them
    in (its own answer, the changelog), it keeps the newer."""
    c = cache()
    newer = {**template(1, "second"), "savedBy": "b"}
    c.apply(KEY, codec.dumps({**template(1), "_draft": newer, "_rev": 3}))
    c.apply_own(KEY, template(1), {**template(1, "first"), "savedBy": "a"}, 2)
    entry = c.resolve("otpMail", "en")
    assert entry is not None and entry.draft is not None and entry.draft["subject"] == "second"
    c.apply(KEY, codec.dumps({**template(1), "_rev": 4}))  # then discarded
    entry = c.resolve("otpMail", "en")
    assert entry is not None and entry.draft is None


def test_a_newer_version_wins_whatever_its_revision() -> None:
    """Rows written before revisions were counted (a rolling upgrade) have none."""
    c = cache()
    c.apply(KEY, codec.dumps({**template(5), "_rev": 5}))
    c.apply(KEY, codec.dumps(template(6)))
    c.apply(KEY, codec.dumps({**template(7), "_rev": 1}))
    assert versions(c) == [7]
