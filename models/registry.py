"""The model registry: what each published version of ``fraud_detector`` is.

One JSON file a version, ``<root>/versions/<n>.json``, holds where the version came
from (its parent, the trigger, the training window, the recipe), how good it was on its
evaluation window and where it stands (candidate, shadow, champion, ...): a
:class:`~models.model_version.ModelVersion`. ``<root>/champion.json`` points at the
champion and keeps the history of changes. Version numbers are Triton's: registry entry
3 describes ``triton_repo/fraud_detector/3/``.

Every write goes to a temporary file that is renamed into place, under an exclusive
``flock`` on ``<root>/.lock``, so readers never see half a file and two processes (or
threads) never allocate the same version: :meth:`Registry.reserve` hands out a number
and marks it taken until :meth:`Registry.record` or :meth:`Registry.release`.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from models.model_version import STATUSES, ModelVersion, Status, utc_now
from models.triton_config import MODEL_NAME


class UnknownVersionError(KeyError):
    """The registry has no entry for a version."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; a message reads better.
        return str(self.args[0]) if self.args else "unknown version"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a temporary file beside it, synced, renamed
    into place (a reader sees the old file or the new one, never a part)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _plain(value: Any) -> Any:
    """A NumPy scalar (a gate check's ``numpy.bool``, a metric's ``float32``) as Python's."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_plain) + "\n")


def published_dirs(repo_dir: Path | str, model_name: str = MODEL_NAME) -> list[int]:
    """Numeric version directories of a model in a Triton repository, sorted."""
    model_dir = Path(repo_dir) / model_name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


class Registry:
    """Model versions as JSON files under ``root``.

    Parameters
    ----------
    root
        The registry folder (created on the first write).
    repo_dir
        The Triton model repository whose version directories the numbers must not
        collide with; without it only the registry's own entries count.
    model_name
        The model directory inside ``repo_dir``.
    """

    def __init__(
        self, root: Path | str, repo_dir: Path | str | None = None, model_name: str = MODEL_NAME
    ) -> None:
        self.root = Path(root)
        self.repo_dir = Path(repo_dir) if repo_dir is not None else None
        self.model_name = model_name

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def reserved_dir(self) -> Path:
        return self.root / "reserved"

    @property
    def champion_path(self) -> Path:
        return self.root / "champion.json"

    def profile_path(self, version: int) -> Path:
        """Where the reference profile (training histograms) of ``version`` is kept."""
        return self.root / "profiles" / f"{version}.json"

    def _path(self, version: int) -> Path:
        return self.versions_dir / f"{int(version)}.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the registry's exclusive lock (threads and processes alike).

        ``flock`` locks belong to an open file description, so two threads that each
        open the lock file exclude each other as two processes do.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # Reading -----------------------------------------------------------------------

    def _numbers(self, folder: Path, suffix: str = "") -> list[int]:
        if not folder.is_dir():
            return []
        stems = (p.name[: len(p.name) - len(suffix)] for p in folder.iterdir()
                 if p.name.endswith(suffix) and not p.name.startswith("."))
        return sorted(int(s) for s in stems if s.isdigit())

    def versions(self) -> list[int]:
        """Recorded version numbers, ascending."""
        return self._numbers(self.versions_dir, ".json")

    def get(self, version: int) -> ModelVersion:
        """The entry of ``version``; :class:`UnknownVersionError` when there is none."""
        path = self._path(version)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            known = self.versions()
            raise UnknownVersionError(
                f"model version {version} is not in the registry at {self.root} "
                f"(known: {known or 'none'})"
            ) from None
        return ModelVersion.from_dict(data)

    def list(self) -> list[ModelVersion]:
        """Every entry, by version."""
        return [self.get(n) for n in self.versions()]

    def champion(self) -> int | None:
        """The champion's version, or ``None`` before the first promotion."""
        return self._champion_doc().get("version")

    def champion_history(self) -> builtins.list[dict[str, Any]]:
        """Every change of champion, oldest first: ``version``, ``since``, ``reason``."""
        return list(self._champion_doc().get("history", []))

    def _champion_doc(self) -> dict[str, Any]:
        try:
            return json.loads(self.champion_path.read_text())
        except FileNotFoundError:
            return {"version": None, "history": []}

    def lineage(self, version: int) -> builtins.list[ModelVersion]:
        """``version``, its parent, grandparent, ...; stops at a parent not recorded."""
        chain = [self.get(version)]
        seen = {version}
        while (parent := chain[-1].parent) is not None and parent not in seen:
            try:
                chain.append(self.get(parent))
            except UnknownVersionError:
                break
            seen.add(parent)
        return chain

    # Allocating ----------------------------------------------------------------------

    def next_version(self, repo_dir: Path | str | None = None) -> int:
        """One more than the largest version recorded, reserved or published.

        A number from here is only a guess while other writers run; use
        :meth:`reserve` to take it.
        """
        repo = Path(repo_dir) if repo_dir is not None else self.repo_dir
        published = published_dirs(repo, self.model_name) if repo is not None else []
        taken = [*self.versions(), *self._numbers(self.reserved_dir), *published]
        return max(taken, default=0) + 1

    def reserve(self, repo_dir: Path | str | None = None) -> int:
        """Take the next version number for this caller alone.

        It stays taken (no other :meth:`reserve` returns it) until :meth:`record`
        writes its entry or :meth:`release` gives it up.
        """
        with self._locked():
            version = self.next_version(repo_dir)
            self.reserved_dir.mkdir(parents=True, exist_ok=True)
            (self.reserved_dir / str(version)).write_text(utc_now() + "\n")
            return version

    def release(self, version: int) -> None:
        """Give up a reservation that will never be recorded (training failed)."""
        with self._locked():
            (self.reserved_dir / str(int(version))).unlink(missing_ok=True)

    # Writing -----------------------------------------------------------------------

    def record(self, entry: ModelVersion) -> ModelVersion:
        """Write a new entry; an existing version is never overwritten.

        Raises
        ------
        FileExistsError
            When ``entry.version`` is already recorded.
        ValueError
            When the entry says it is the champion (use :meth:`set_champion`).
        """
        if entry.status == "champion":
            raise ValueError("record a version as a candidate and promote it with set_champion")
        with self._locked():
            path = self._path(entry.version)
            if path.exists():
                raise FileExistsError(f"model version {entry.version} is already recorded "
                                      f"at {path}")
            _write_json(path, entry.to_dict())
            (self.reserved_dir / str(entry.version)).unlink(missing_ok=True)
        return entry

    def update_status(self, version: int, status: Status, reason: str = "") -> ModelVersion:
        """Change the status (and reason) of a recorded version.

        The champion pointer and the statuses always agree, so promoting goes through
        :meth:`set_champion` and the champion cannot be demoted here either.
        """
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        if status == "champion":
            raise ValueError(f"use set_champion({version}, reason) to promote a version")
        with self._locked():
            if self.champion() == version:
                raise ValueError(
                    f"version {version} is the champion; set_champion(another, reason, "
                    f"previous_status={status!r}) replaces it"
                )
            return self._set_status(version, status, reason)

    def _set_status(self, version: int, status: Status, reason: str) -> ModelVersion:
        entry = self.get(version)
        entry.status, entry.reason = status, reason
        _write_json(self._path(version), entry.to_dict())
        return entry

    def record_gate(self, version: int, gate: dict[str, Any]) -> ModelVersion:
        """Keep the promotion gate's verdict and figures in a recorded version's entry."""
        with self._locked():
            entry = self.get(version)
            entry.gate = dict(gate)
            _write_json(self._path(version), entry.to_dict())
            return entry

    def set_champion(
        self, version: int, reason: str, *, previous_status: Status = "retired"
    ) -> ModelVersion:
        """Make ``version`` the champion; the previous one gets ``previous_status``.

        Promoting the current champion again changes nothing.
        """
        if previous_status == "champion":
            raise ValueError("the previous champion cannot stay a champion")
        with self._locked():
            entry = self.get(version)
            doc = self._champion_doc()
            previous = doc.get("version")
            if previous == version:
                return entry
            if previous is not None:
                try:
                    self._set_status(previous, previous_status, f"replaced by {version}: {reason}")
                except UnknownVersionError:
                    pass
            entry = self._set_status(version, "champion", reason)
            history = [*doc.get("history", []),
                       {"version": version, "since": utc_now(), "reason": reason}]
            _write_json(self.champion_path, {"version": version, "history": history})
            return entry

    def sync(self, repo_dir: Path | str | None = None) -> builtins.list[int]:
        """Record every published version directory that has no entry yet.

        Such a version was published outside the registry (an older factory, a hand
        copy): it gets an entry with trigger ``manual`` and an unknown lineage.

        Returns
        -------
        list of int
            The versions recorded now.
        """
        repo = Path(repo_dir) if repo_dir is not None else self.repo_dir
        if repo is None:
            raise ValueError("sync needs the Triton repository (repo_dir)")
        added: list[int] = []
        with self._locked():
            # A reserved version is being published by its trainer, which records it.
            skip = {*self.versions(), *self._numbers(self.reserved_dir)}
            for version in published_dirs(repo, self.model_name):
                if version in skip:
                    continue
                entry = ModelVersion(version=version, trigger="manual",
                                     reason=f"unknown lineage: found in {repo / self.model_name}")
                _write_json(self._path(version), entry.to_dict())
                added.append(version)
        return added
