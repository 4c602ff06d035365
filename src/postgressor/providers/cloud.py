"""What the three cloud providers share: labels, record-before-next-call, resume, sweep-by-label destroy.

Order of every ``up``: save the state file (with the stack's tag) before the first API call; then
for each resource kind, find it by label/tag, else create it at most once and record it at once. An
interrupted ``up`` is resumed by the next ``up``; ``destroy`` deletes what the state recorded and whatever
else carries the stack's labels (the window between a create returning and the state being saved).

Labels are stable: the stack's name, the project's identity (``project`` setting, default the directory's
name) and a tag derived from it. So a stack whose state was lost can still be listed (``servers list``)
and removed (``servers destroy``), and ``up`` refuses to adopt a server no state records. States written
before labels were stable keep their random tag and are matched by it alone.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from postgressor.config import Settings
from postgressor.errors import PostgressorError, UsageError
from postgressor.providers import retry
from postgressor.providers.base import Log, Provider, SizeChange
from postgressor.remote.ssh import generate_keypair, wait_for_ssh
from postgressor.state import HostRecord, Resource, StackState

T = TypeVar("T")
Hook = Callable[[str], None]
STACK_LABEL = "postgressor-stack"
TAG_LABEL = "postgressor-id"
PROJECT_LABEL = "postgressor-project"
NAME_PREFIX = "postgressor-"
META = "cloud"  # the state record holding the stack's tag and region, written before any API call
OPEN_PORTS = (22, 80, 443)


def _no_hook(event: str) -> None:
    """Called after each create returns and before it is recorded; tests raise KeyboardInterrupt here."""


on_created: Hook = _no_hook  # replaced in tests


@dataclass
class Found:
    id: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelledServer:
    """A server at the provider that carries postgressor's labels (whatever the local state says)."""

    id: str
    name: str
    stack: str
    project: str  # the project's label; "" when the provider keeps only the tag (OVH: names only)
    region: str
    status: str
    created: str  # ISO 8601 as the provider reports it

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def project_identity(settings: Settings) -> str:
    """The project's label value: ``project`` or the current directory's name, as a Hetzner-valid label
    value (letters, digits, '-', '_', '.', starting and ending alphanumeric, at most 63)."""
    raw = settings.project or Path.cwd().resolve().name
    slug = re.sub(r"[^a-z0-9_.-]+", "-", raw.lower())[:63].strip("-_.")
    if not slug:
        raise PostgressorError(f"cannot label servers with project '{raw}'; set 'project' in postgressor.toml "
                               "(letters, digits, '-', '_' or '.')")  # fmt: skip
    return slug


def stable_tag(project: str, stack: str) -> str:
    """8 hex digits naming the project's stack in resource names (``postgressor-<stack>-<tag>``)."""
    return hashlib.sha256(f"{project}\0{stack}".encode()).hexdigest()[:8]


def user_data() -> str:
    """The minimal cloud-init user data every cloud server gets."""
    return resources.files("postgressor.providers").joinpath("user-data.yaml").read_text()


@dataclass(frozen=True)
class ResourceKind:
    """One kind of resource a cloud provider creates for a stack: how to list the stack's and delete one."""

    find_all: Callable[[], list[Found]]  # the stack's resources of this kind (by labels, tags or unique name)
    delete: Callable[[str], object]  # delete by id and wait until gone; a missing one is not an error


class CloudProvider(Provider):
    title: str
    kinds: tuple[str, ...]  # creation order; destroy goes backwards
    login_user = "root"
    api_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, settings: Settings, state: StackState, log: Log, *, backoff: retry.Backoff | None = None,
                 hook: Hook | None = None) -> None:  # fmt: skip
        super().__init__(settings, state, log)
        self.backoff = backoff or retry.Backoff()
        self._hook = hook
        self._region: str | None = None
        self.replaced = ""  # the id of a recorded resource gone at the provider, re-created by this run

    @property
    def recreated(self) -> bool:
        return bool(self.replaced)

    # ---- what each provider supplies

    @abstractmethod
    def transient(self, err: BaseException) -> bool:
        """Worth retrying: rate limits, 5xx, timeouts, connection errors."""

    @abstractmethod
    def explain(self, err: BaseException) -> PostgressorError | None:
        """A one-line error for a known failure (bad credentials, quota, capacity), else None."""

    @abstractmethod
    def resource_kinds(self) -> dict[str, ResourceKind]:
        """How to list and delete each kind in ``kinds``."""

    @abstractmethod
    def create_server(self, public_key: str) -> str:
        """Ensure every resource up to a running server; return its public IPv4."""

    @abstractmethod
    def list_labelled(self) -> list[LabelledServer]:
        """Every server of this project carrying postgressor's labels, in the region(s) the API lists."""

    @abstractmethod
    def server_power(self, id: str) -> str:
        """The server's power state as ``Provider.power_state`` names it, read from the provider's API."""

    def power_state(self) -> str:
        recorded = self.state.find("server")
        if recorded is None:
            return "missing"
        with self.translated("reading the server's power state"):
            return self.api("read the server's power state", lambda: self.server_power(recorded.id))

    @abstractmethod
    def default_size(self) -> str: ...

    # ---- resizing: what each provider supplies

    @abstractmethod
    def read_size(self, id: str) -> dict[str, Any] | None:
        """The server's size as the provider reports it, in the keys the state records it under (``Found``
        details); None when the server is gone."""

    @abstractmethod
    def asked_size(self, current: dict[str, Any]) -> dict[str, Any]:
        """The size the settings ask for, in the same keys (what they leave unset stays ``current``'s)."""

    @abstractmethod
    def size_names(self, size: dict[str, Any]) -> tuple[str, str]:
        """How the provider names ``size``, and the catalogue's name for it (for the price)."""

    def check_resize(self, id: str, current: dict[str, Any], asked: dict[str, Any]) -> tuple[str, ...]:
        """Refuse (UsageError, with the provider's rule) a change the provider would refuse, before any change;
        else notes on what the provider keeps or changes besides CPUs and memory."""
        return ()

    @abstractmethod
    def change_size(self, change: SizeChange) -> None:
        """Resize and wait until the provider reports the new size; on a failure, leave the server running
        again if this call stopped it, then raise."""

    def resize_requested(self) -> bool:
        """Only a size the user asked for (flag or config) resizes; the default size never does."""
        return bool(self.settings.size)

    @abstractmethod
    def ssh_timeout(self) -> float: ...

    @abstractmethod
    def resolve(self, name: str) -> str:
        """The provider's region code for a code or city (advisor.regions.resolve_region); UsageError if none."""

    def size_change(self) -> SizeChange | None:
        recorded = self.state.find("server")
        if recorded is None or not self.resize_requested():
            return None
        with self.translated("reading the server's size"):
            current = self.api("read the server's size", lambda: self.read_size(recorded.id))
            if current is None:
                return None  # gone at the provider: up creates a new one at the asked size
            asked = self.asked_size(current)
            if asked == current:
                return None
            notes = self.check_resize(recorded.id, current, asked)
            (old, old_priced), (new, new_priced) = self.size_names(current), self.size_names(asked)
        return SizeChange(self.name, self.region, recorded.id, old, new, old_priced, new_priced, asked, notes)

    def resize(self, change: SizeChange) -> None:
        """Resize, then record the new size; a failure leaves the old size recorded and says where the server is."""
        self.log(f"resizing {self.title} server {change.server}: {change.describe()}")
        try:
            self.change_size(change)
        except UsageError as err:
            raise UsageError(f"{err}; the state still records {change.old}") from None
        except (PostgressorError, *self.api_errors) as err:  # type: ignore[misc]  # a tuple of exception classes
            reason = str(err) if isinstance(err, PostgressorError) else str(self.explain(err) or retry.short(err))
            raise PostgressorError(
                f"{self.title} could not resize server {change.server} to {change.new} ({reason}); the state still "
                f"records {change.old}; {self.power_after_failure(change.server)}"
            ) from None
        self.state.update("server", **change.target)
        self.log(f"{self.title} server {change.server} is now {change.new}")

    def power_after_failure(self, id: str) -> str:
        """Where a failed resize left the server, and what to do next."""
        try:
            power = self.api("read the server's power state", lambda: self.server_power(id))
        except Exception:  # the resize error matters more; this is only a hint
            return "its power state is unknown: check the provider's console, then run 'postgressor up'"
        if power == "running":
            return "the server runs at its old size: run 'postgressor up' to try again"
        return f"the server is {power}: 'postgressor up' starts it (and retries the resize)"

    def find_all(self, kind: str) -> list[Found]:
        """Resources of ``kind`` carrying this stack's labels/tags (or unique name)."""
        return self.resource_kinds()[kind].find_all()

    def delete(self, kind: str, id: str) -> None:
        """Delete one resource and wait until it is gone; an already missing one is not an error."""
        self.resource_kinds()[kind].delete(id)

    def describe(self, kind: str) -> str:
        return f"create the {kind.replace('_', ' ')}"

    def region_hint(self) -> str:
        """Where the provider's region comes from when no --region is given."""
        return ""

    # ---- shared

    def hook(self, event: str) -> None:
        (self._hook or on_created)(event)

    @property
    def region(self) -> str:
        if self._region is None:
            meta = self.state.find(META)
            recorded = str(meta.details.get("region", "")) if meta else ""
            wanted = self.resolve(self.settings.region or recorded or self.region_hint())
            if recorded and wanted != recorded:
                raise PostgressorError(
                    f"stack '{self.state.stack}' lives in {self.name} region {recorded}, not {wanted}; "
                    "drop --region or use another --stack for a second server"
                )
            self._region = wanted
        return self._region

    @property
    def size(self) -> str:
        return self.settings.size or self.default_size()

    @property
    def key_path(self) -> Path:
        return self.state.stack_dir / "id_ed25519"

    @property
    def identity(self) -> str:
        """The project's label value (not OVH's cloud project id)."""
        return project_identity(self.settings)

    def _meta(self) -> Resource:
        """The stack's tag record as a fresh ``up`` writes it (stable tag, region)."""
        return Resource(META, stable_tag(self.identity, self.state.stack), "", {"region": self.region})

    @property
    def creation_token(self) -> str:
        """Differs for every state (a re-created stack of the same name) and for every replacement of a gone
        resource: idempotency tokens use it, since a provider answers a reused token with the old, perhaps
        terminated, resource."""
        meta = self.state.find(META)
        seed = f"{self.tag}{meta.created_at if meta else ''}{self.replaced}"
        return hashlib.sha256(seed.encode()).hexdigest()[:12]

    @property
    def tag(self) -> str:
        meta = self.state.find(META)
        return meta.id if meta else ""

    def labels(self) -> dict[str, str]:
        labels = {STACK_LABEL: self.state.stack, TAG_LABEL: self.tag}
        if self.tag == stable_tag(self.identity, self.state.stack):
            labels[PROJECT_LABEL] = self.identity  # states from before stable labels have a random tag
        return labels

    def resource_name(self) -> str:
        return f"{NAME_PREFIX}{self.state.stack}-{self.tag}"

    def validate(self) -> None:
        _ = self.region  # refuses an unknown region before any API call

    def plan(self) -> list[str]:
        steps = [f"{self.describe(kind)} ({self.title} {self.region})" for kind in self.kinds
                 if self.state.find(kind) is None]  # fmt: skip
        recorded = self.state.find("server")
        if recorded is None:
            steps.append(f"boot a {self.size} server, wait for SSH and pin its host key")
            return steps
        power = self.power_state()
        if power == "missing":
            steps.append(f"server {recorded.id} is gone at {self.title}: boot a new {self.size} server")
            return steps
        if power in ("off", "stopping"):
            steps.append(f"power server {recorded.id} on (it is {power}) and wait for SSH")
        change = self.size_change()
        if change is not None:
            steps.append(f"resize server {change.server}: {change.describe()} (asks first; the server restarts)")
        return steps

    def begin(self) -> None:
        """Save the state file with the stack's tag before the first API call, so destroy can always sweep.

        A fresh state whose labels already name a server means the state was lost: refuse to adopt it
        (its SSH key is gone with the state) and say how to remove it.
        """
        if self.state.find(META) is not None:
            return
        self.state.resources.append(self._meta())
        try:
            orphans = self.api("look up servers labelled for this stack", lambda: self.find_all("server"))
        finally:
            self.state.resources = [r for r in self.state.resources if r.kind != META]
        if orphans:
            raise PostgressorError(
                f"{self.title} already has server {orphans[0].id} labelled for stack '{self.state.stack}' of "
                f"project '{self.identity}', but no state records it (was {self.state.path.parent} lost?); "
                f"restore that directory, or remove the server with 'postgressor --stack {self.state.stack} "
                f"servers destroy --provider {self.name}'"
            )
        self.state.add(META, stable_tag(self.identity, self.state.stack), region=self.region)

    def sweep(self) -> list[str]:
        """Delete every resource labelled for this stack, with no state: ``servers destroy``."""
        self.state.resources = [self._meta()]
        with self.translated("deleting the stack's labelled resources"):
            removed = [line for kind in reversed(self.kinds) for line in self._destroy_kind(kind)]
        return removed

    def api(self, what: str, fn: Callable[[], T]) -> T:
        return retry.call(what, fn, self.transient, self.backoff, self.log)

    def poll(self, what: str, fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 900,
             interval: float = 5) -> T:  # fmt: skip
        return retry.poll(what, lambda: self.api(what, fetch), done, timeout, interval, self.backoff)

    def find_one(self, kind: str) -> Found | None:
        found = self.api(f"look up the {kind}", lambda: self.find_all(kind))
        recorded = self.state.find(kind)
        mine = [f for f in found if recorded and f.id == recorded.id]
        if len(found) > 1:
            self.log(f"found {len(found)} {kind} resources labelled for this stack; using one, "
                     "'postgressor destroy' removes all")  # fmt: skip
        best = mine or found
        return best[0] if best else None

    def ensure(self, kind: str, create: Callable[[], Found]) -> Found:
        """Find the stack's ``kind`` or create it once; record it before returning."""
        recorded = self.state.find(kind)
        found = self.find_one(kind)
        if found is None:
            if recorded is not None:
                self.log(f"the recorded {kind} {recorded.id} no longer exists; creating a new one")
                self.replaced = recorded.id
            self.log(f"{self.describe(kind)} ({self.title} {self.region})")
            found = retry.create_once(f"create the {kind}", create, lambda: self.find_one(kind), self.transient,
                                      self.backoff, self.log)  # fmt: skip
            self.hook(f"created {kind}")
        details = {**found.details, "region": self.region}
        if recorded is None or recorded.id != found.id or recorded.details != details:
            self.state.add(kind, found.id, **details)
        return found

    @contextmanager
    def translated(self, doing: str) -> Iterator[None]:
        """SDK errors become one line; what was created stays recorded."""
        try:
            yield
        except PostgressorError:
            raise
        except self.api_errors as err:
            known = self.explain(err)
            if known is not None:
                raise known from None
            raise PostgressorError(
                f"{self.title} API error while {doing}: {retry.short(err)}; run the command again to resume "
                "(what was created is recorded) or 'postgressor destroy' to remove it"
            ) from None

    def provision(self) -> HostRecord:
        with self.translated("creating the server"):
            self.begin()
            public_key = generate_keypair(self.key_path, f"postgressor-{self.state.stack}")
            address = self.create_server(public_key)
        old = self.state.host
        # The same server keeps its pin even at a new address (a restarted instance); only a server created
        # anew (the recorded one was gone) starts unpinned.
        pinned = old.host_key if old and not self.recreated else ""
        host = HostRecord(address, 22, self.login_user, str(self.key_path.resolve()), pinned)
        self.log(f"waiting for SSH on {address}:22")
        try:
            seen = wait_for_ssh(address, 22, timeout=self.ssh_timeout())
        except PostgressorError as err:
            raise PostgressorError(
                f"{err}; the server is recorded: 'postgressor up' waits again, 'postgressor destroy' removes it"
            ) from None
        return self.pin(host, seen)

    def destroy(self) -> list[str]:
        removed: list[str] = []
        meta = self.state.find(META)
        if meta and meta.details.get("region"):
            self._region = str(meta.details["region"])  # where it was created, whatever the config says now
        with self.translated("deleting the stack's resources"):
            for kind in reversed(self.kinds):
                removed += self._destroy_kind(kind)
            self.state.remove(META)
        if self.state.stack_dir.exists():
            shutil.rmtree(self.state.stack_dir)
            removed.append(f"deleted {self.state.stack_dir} (SSH key, known_hosts)")
        return removed

    def _destroy_kind(self, kind: str) -> list[str]:
        """Delete the recorded ``kind`` and any other carrying the stack's labels, then forget it."""
        recorded = self.state.find(kind)
        ids = [recorded.id] if recorded else []
        if self.tag:
            ids += [f.id for f in self.api(f"look up the {kind}", lambda: self.find_all(kind))]
        removed = []
        for id in dict.fromkeys(ids):
            self.log(f"deleting the {kind.replace('_', ' ')} {id}")
            self.api(f"delete the {kind}", lambda i=id: self.delete(kind, i))  # type: ignore[misc]
            removed.append(f"deleted {self.title} {kind.replace('_', ' ')} {id}")
        self.state.remove(kind)
        return removed
