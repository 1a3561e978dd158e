"""The kinds of feedback a group can hold, as one table: what each kind's targets are called in a request, which
setting names its checkpoint, and (at run time) the model that serves it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.config import Settings
    from service.serving.predictor import Predictor


@dataclass(frozen=True)
class Kind:
    """What is fixed about a kind of feedback, whatever the deployment."""

    name: str  # as stored with a group and sent as an item's "kind"
    targets: str  # the /predict field that holds targets of this kind
    setting: str  # the Settings field that names this kind's checkpoint

    @property
    def env(self) -> str:
        """The environment variable of `setting` (every setting is GPO_*)."""
        return f"GPO_{self.setting.upper()}"

    def checkpoint_name(self, settings: Settings) -> str | None:
        return getattr(settings, self.setting)


CHOICE = Kind("choice", targets="questions", setting="checkpoint")
RATING = Kind("rating", targets="responses", setting="rating_checkpoint")
COMPARISON = Kind("comparison", targets="pairs", setting="comparison_checkpoint")
KINDS: dict[str, Kind] = {k.name: k for k in (CHOICE, RATING, COMPARISON)}


class KindNotServed(Exception):
    """A group of a kind this deployment has no model for, or asked for the other kind's targets (HTTP 422)."""

    def __init__(self, name: str, kind: str, reason: str) -> None:
        super().__init__(f"group {name!r} holds {kind} items: {reason}")
        self.name = name
        self.kind = kind


@dataclass
class KindModel:
    """A served kind: its checkpoint's predictor and, once checked against the worker, the key prefix of the
    vectors its items are embedded with."""

    kind: Kind
    predictor: Predictor
    embedder_key: str | None = None  # set by Services.embedder_keys()

    @property
    def state_embedder(self) -> str:
        """The embedder part of a cached context's key ("" for a checkpoint that uses no embedding)."""
        return (self.embedder_key or "") if self.predictor.uses_embedding else ""


def check_served(served: dict[str, KindModel], group_id: str, group_kind: str, asked: str) -> KindModel:
    """The model for a group of `group_kind` whose `asked` targets a request sent: the group's kind must be the one
    asked for and be served (KindNotServed otherwise, naming what to set or to send)."""
    model = served.get(group_kind)
    if model is None:
        kind = KINDS.get(group_kind, CHOICE)
        raise KindNotServed(group_id, group_kind, f"this deployment serves no {group_kind} model (set {kind.env})")
    if group_kind != asked:
        raise KindNotServed(group_id, group_kind, f"send '{model.kind.targets}' to predict it")
    return model
