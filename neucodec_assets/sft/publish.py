"""Publishing a build of the SFT dataset as a version: the card is the pointer.

A build writes its files (packed parts, split file, manifest, totals, charts) into a new version folder, then
replaces the card, which names only that folder, in one PUT: a reader that reads the card and then the files it
names gets one whole version, never parts of two. The version the replaced card named is kept until the next
build publishes, so a reader that read that card just before has a whole rebuild interval to finish; older
versions, and the leftovers of builds that failed before their card, are deleted after the new card is in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from neucodec_assets.sft.layout import VERSIONS_FOLDER, SftLayout
from resources.bucket.base import Bucket

_NAMED_VERSION = re.compile(rf"{VERSIONS_FOLDER}/([^/\"'\s)]+)/")


def new_version() -> str:
    """A version name that sorts by the time its build started (UTC, to the microsecond)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def card_version(card: str | None) -> str | None:
    """The version a card's paths name (None: no card, or one from before versions)."""
    found = _NAMED_VERSION.search(card or "")
    return found.group(1) if found else None


def stale_versions(versions: set[str], published: str, replaced: str | None) -> list[str]:
    """The versions to delete once `published` replaced a card naming `replaced`: those older than both.

    The replaced version stays (a reader may have read its card a moment ago), and so does any version newer
    than the older of the two: a build that is still writing, when two ran at once. Without a replaced version
    (a first build, or one after the unversioned layout) nothing is deleted yet."""
    if replaced is None:
        return []
    floor = min(published, replaced)
    return sorted(v for v in versions if v < floor)


@dataclass
class Publication:
    """What publishing a version did."""

    version: str
    replaced: str | None  # the version of the card it replaced; kept until the next build
    deleted_versions: list[str] = field(default_factory=list)
    deleted_keys: int = 0


def publish_card(bucket: Bucket, layout: SftLayout, version: str, card: str) -> Publication:
    """Replace the card with `card` (one PUT; every file it names must exist already), then delete the versions
    no reader can still be loading, and the unversioned files of builds before versions once a versioned card
    has replaced theirs."""
    old_card = bucket.read_bytes(layout.card_key).decode() if bucket.exists(layout.card_key) else None
    replaced = card_version(old_card)
    bucket.put_bytes(layout.card_key, card.encode())
    by_version: dict[str, list[str]] = {}
    for key, _ in bucket.list_keys(layout.versions_prefix):
        named = layout.version_of_key(key)
        if named is not None:
            by_version.setdefault(named, []).append(key)
    stale = stale_versions(set(by_version), version, replaced)
    doomed = [key for name in stale for key in by_version[name]]
    if replaced is not None:
        doomed += [key for prefix in layout.unversioned_prefixes() for key, _ in bucket.list_keys(prefix)]
    for key in doomed:
        bucket.delete(key)
    return Publication(version=version, replaced=replaced, deleted_versions=stale, deleted_keys=len(doomed))
