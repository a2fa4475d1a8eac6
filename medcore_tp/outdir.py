"""The output folder of a run: checked before work starts, never mixing two runs' files.

Policy (``--out``):

- The folder must be writable; this is tried (a file is created and removed) before any long work, and
  a folder that does not exist yet is created for the try and removed again, so a refused run leaves
  nothing behind.
- A run records what it writes in ``MANIFEST`` (``medcore-tp-run.json``: command, status, files), kept
  up to date as each file lands. A folder that already holds another run's outputs (the files its
  manifest lists, or, for folders written before manifests existed, the known output names) is refused
  with one line naming those files; ``--overwrite`` removes exactly those files (nothing else in the
  folder) before the new run starts. ``finetune --resume`` continues the run it finds.
- Files that are inputs of the new run (e.g. ``--splits`` pointing into the folder) are never removed.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from medcore_tp.allocator import keeps_freed_memory
from medcore_tp.atomic import on_write, save_json
from medcore_tp.errors import MedcoreError

MANIFEST = "medcore-tp-run.json"
# Every file a medcore-tp command writes into --out (folders from before manifests existed).
KNOWN_OUTPUTS = (
    "pruned.pth", "summary.json", "scores.csv", "splits.json", "per_image.csv",
    "best.pth", "state.pth", "curves.csv", "finetune.json",
)

__all__ = ["KNOWN_OUTPUTS", "MANIFEST", "RunFolder", "check_writable", "previous_outputs"]


def _created_ancestors(path: Path) -> list[Path]:
    """The folders of ``path`` (itself included) that do not exist yet, outermost first."""
    missing = []
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing.append(p)
    return missing[::-1]


def check_writable(path: str | os.PathLike, option: str = "--out") -> None:
    """Raise a one-line :class:`MedcoreError` unless files can be created in folder ``path``.

    Creates the folder (and missing parents) to try, then removes what it created.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise MedcoreError(f"{option} {folder}: is a file, not a folder")
    created = _created_ancestors(folder)
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".medcore-tp-write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise MedcoreError(f"{option} {folder}: cannot write there ({reason}); choose another folder") from None
    finally:
        for p in reversed(created):
            try:
                p.rmdir()
            except OSError:
                pass


def _read_manifest(folder: Path) -> dict | None:
    try:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("files"), list) else None


def previous_outputs(folder: str | os.PathLike) -> tuple[list[str], dict | None]:
    """Names of the files in ``folder`` that belong to an earlier run, and that run's manifest."""
    folder = Path(folder)
    if not folder.is_dir():
        return [], None
    manifest = _read_manifest(folder)
    names = manifest["files"] if manifest else list(KNOWN_OUTPUTS)
    present = [n for n in names if isinstance(n, str) and "/" not in n and (folder / n).is_file()]
    if manifest is not None or present:
        present = present + ([MANIFEST] if (folder / MANIFEST).is_file() else [])
    return present, manifest


class RunFolder:
    """The ``--out`` folder of one run; see the module docstring.

    ``check()`` before any long work (writable, no other run's files unless ``overwrite``);
    ``start()`` when the run begins writing (removes the old run's files under ``overwrite``, writes the
    manifest and follows every file written inside the folder); ``finish(status)`` at the end.
    """

    def __init__(self, path: str | os.PathLike, command: str, overwrite: bool = False, resume: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> None:
        self.path = Path(path)
        self.command = command
        self.overwrite = overwrite
        self.resume = resume
        self.inputs = {os.path.realpath(p) for p in inputs if p}
        self.files: list[str] = []
        self.removed: list[str] = []
        self._stop = None
        self._created: list[Path] = []
        self._old: list[str] = []
        self._manifest: dict | None = None

    def check(self) -> None:
        """Fail now, in one line, if the run could not write its outputs or would mix them with another's."""
        check_writable(self.path)
        self._old, self._manifest = previous_outputs(self.path)
        if not self._old:
            return
        if self.resume and self._manifest is not None and self._manifest.get("command") == self.command:
            return  # --resume continues the run that is there
        shown = [n for n in self._old if n != MANIFEST] or self._old
        inputs = [n for n in shown if os.path.realpath(self.path / n) in self.inputs]
        if self.overwrite and inputs:
            raise MedcoreError(f"--overwrite would remove {self.path / inputs[0]}, an input of this run; "
                               f"choose a new --out folder")
        if not self.overwrite:
            what = f"a {self._manifest['command']} run" if self._manifest and self._manifest.get("command") else "another run"
            raise MedcoreError(f"--out {self.path} already holds the outputs of {what} ({', '.join(shown)}); "
                               f"choose a new folder or add --overwrite to remove those files")

    def start(self) -> None:
        """Remove the old run's files (``overwrite``), write the manifest and start following writes."""
        self._created = _created_ancestors(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        resuming = self.resume and self._manifest is not None and self._manifest.get("command") == self.command
        if resuming:
            self.files = [n for n in self._manifest["files"] if (self.path / n).is_file()]
        elif self._old:
            for name in self._old:
                (self.path / name).unlink(missing_ok=True)
            self.removed = [n for n in self._old if n != MANIFEST]
        self._status = "running"
        self._write_manifest()
        root = os.path.realpath(self.path)
        manifest = os.path.join(root, MANIFEST)

        def note(written: str) -> None:
            real = os.path.realpath(written)
            if os.path.dirname(real) == root and real != manifest:
                name = os.path.basename(real)
                if name not in self.files:
                    self.files.append(name)
                    self._write_manifest()

        self._stop = on_write(note)

    def _write_manifest(self) -> None:
        # keep_freed_memory: how the process's allocator ran (it changes timings, not results)
        save_json({"format": "medcore-tp run", "command": self.command, "status": self._status,
                   "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "keep_freed_memory": keeps_freed_memory(), "files": self.files}, self.path / MANIFEST)

    def finish(self, status: str) -> None:
        """Stop following writes and record ``status`` (complete, interrupted, failed).

        A run that failed or was interrupted before writing anything leaves nothing behind (not even
        the folder, when it created it).
        """
        if self._stop is None:
            return
        self._stop()
        self._stop = None
        if not self.files and status != "complete":
            (self.path / MANIFEST).unlink(missing_ok=True)
            for p in reversed(self._created):
                try:
                    p.rmdir()
                except OSError:
                    pass
            return
        self._status = status
        self._write_manifest()

    def kept(self) -> str:
        """One phrase saying what the run left in the folder (for the Ctrl-C line)."""
        if not self.files:
            return f"nothing was written to {self.path}"
        return f"kept {', '.join(self.files)} in {self.path}"
