"""Which registry tags one variant's images get at release, all derived from images/matrix.toml.

    data : v2.6-cu124, v2.6 (default variant only), v2.6-cu124-YYYYMMDD-<sha7> (immutable)
    torch: v2.6-cu124-torch
    base : cu124-base

An image whose smoke report ran without a GPU (accepted only with --allow-cpu-only) gets every tag
with GPU_UNVERIFIED appended, so no one pulls `v2.6-cu124` and gets an image that never saw a GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagectl.matrix import Matrix, Variant

GPU_UNVERIFIED = "-gpu-unverified"
LABEL_CREATED = "org.opencontainers.image.created"
LABEL_REVISION = "org.opencontainers.image.revision"
_SHA = re.compile(r"^[0-9a-f]{7,40}$")
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")


class TagError(ValueError):
    """The image lacks what its immutable tag is made of; the message says how to fix the build."""


@dataclass(frozen=True)
class Stamp:
    """The immutable part of a release: the image's build date and the commit it was built from."""

    date: str  # YYYYMMDD
    sha7: str

    def __str__(self) -> str:
        return f"{self.date}-{self.sha7}"

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> Stamp:
        """From the image's own OCI labels, so the tag names what is inside, not today's checkout."""
        revision = labels.get(LABEL_REVISION, "")
        if not _SHA.match(revision):
            raise TagError(
                f"the image's {LABEL_REVISION} label is {revision or 'missing'!r}, not a git commit: the "
                "immutable tag needs the commit the image was built from; commit, then rebuild (make build)"
            )
        created = _DATE.match(labels.get(LABEL_CREATED, ""))
        if not created:
            raise TagError(f"the image has no {LABEL_CREATED} label (YYYY-MM-DD...): rebuild it with `make build`")
        return cls(date="".join(created.groups()), sha7=revision[:7])


def release_tags(matrix: Matrix, variant: Variant, layer: str, stamp: Stamp | None,
                 gpu_verified: bool = True) -> list[str]:
    """Tags (without registry/repository) that `layer` of `variant` is pushed under."""
    tags = matrix.tags_for(variant, layer)
    if layer in ("data", "devel"):
        if stamp is None:
            raise TagError(f"the {layer} image needs a stamp (date + commit) for its immutable tag")
        tags = [*tags, f"{tags[0]}-{stamp}"]
    if not gpu_verified:
        tags = [f"{t}{GPU_UNVERIFIED}" for t in tags]
    return tags


def immutable_tag(matrix: Matrix, variant: Variant, stamp: Stamp, gpu_verified: bool = True) -> str:
    return release_tags(matrix, variant, "data", stamp, gpu_verified)[-1]
