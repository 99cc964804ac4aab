"""The typed results of the service's library, atlas and upload actions (what the UI shows)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class StyleSummary:
    """One style in a list: enough for a chip, a row or a map tooltip."""

    slug: str
    name: str
    family: str
    tags: list[str]
    source: str  # starter | upload | import
    thumbnail: str | None  # a PNG path the app may serve, or None
    applicable: bool  # fits the loaded base model (others are shown, never applied)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class StyleCard(StyleSummary):
    """Everything about one style, for its card."""

    description: str = ""
    trigger_words: list[str] = field(default_factory=list)
    format: str = ""
    rank: int | None = None
    sha256: str = ""
    created: float = 0.0
    thumbnails: list[str] = field(default_factory=list)
    nearest: list[dict] = field(default_factory=list)  # [{"slug", "name", "score"}]
    cluster: str | None = None
    flags: list[str] = field(default_factory=list)  # e.g. "near-duplicate of pixel-art"
    weight_words: list[str] = field(default_factory=list)  # what its weights react to
    # the generation settings it recommends when used alone (fusion.engine.RECOMMENDABLE)
    recommended: dict = field(default_factory=dict)


@dataclass
class AtlasPoint:
    slug: str
    name: str
    x: float
    y: float
    cluster: int
    family: str
    applicable: bool
    thumbnail: str | None


@dataclass
class AtlasCluster:
    id: int
    label: str
    size: int


@dataclass
class AtlasView:
    points: list[AtlasPoint]
    clusters: list[AtlasCluster]

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class UploadReport:
    """What happened to one uploaded file: accepted (with its slug), a duplicate, or refused."""

    file: str  # the name the user uploaded
    ok: bool
    slug: str | None = None
    duplicate_of: str | None = None  # same sha256 as an existing style: not added
    near_duplicate_of: str | None = None  # same weights up to tiny noise: added, flagged
    error: dict | None = None  # {"code", "file", "problem", "advice", "message"} if refused
    seconds: float = 0.0
    note: str | None = None  # accepted, but with something the user should know (off the map)

    def to_json(self) -> dict:
        return asdict(self)
