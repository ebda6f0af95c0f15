"""The one module that touches output files: the job folder, its records and the photos.

- **Names** (`plan_outputs`): each input's output path, mirroring the input tree under the output
  folder; an output folder that is, contains or sits inside an input folder is refused.
- **Ownership** (`JobDir`): outputs are claimed in OUTPUT/idguardian_outputs*.jsonl before they
  are first written; a file there that no record names is never replaced. One job per folder
  (OUTPUT/idguardian.lock, flock). The job's settings hash is kept in OUTPUT/idguardian_job.json.
- **Records**: one JSON line per finished photo in OUTPUT/idguardian_summary*.jsonl (fsync), a
  line cut by a crash ended before the next; `merge_reports` writes OUTPUT/idguardian_report.json.
- **Photos** (`write_protected`, `write_no_face`): written atomically (images.write_photo), read
  back and checked against the budget; the PNG carries the settings and input hash so a restart
  can adopt an output renamed into place just before a crash.
"""
from __future__ import annotations

import dataclasses
import errno
import glob
import json
import os
import sys
import threading
import time
from typing import Sequence

import numpy as np

from idguardian_jax import __version__, images, jsonio, results
from idguardian_jax.checkpoints.cache import file_sha256
from idguardian_jax.errors import UsageError

JOB_FILE = "idguardian_job.json"
REPORT_FILE = "idguardian_report.json"
SUMMARY_NAME = "idguardian_summary.jsonl"
SUMMARY_GLOB = "idguardian_summary*.jsonl"


# ------------------------------------------------------------------------------------------
# Output names
# ------------------------------------------------------------------------------------------
def _inside(child: str, parent: str) -> bool:
    child, parent = os.path.realpath(child), os.path.realpath(parent)
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_output_folder(output_dir: str, input_folders: Sequence[str] = (),
                        input_files: Sequence[str] = ()) -> None:
    """UsageError when the output folder equals, contains or sits inside an input folder (or the
    folder of an --input_list), or contains an input file: a rerun would read outputs as inputs,
    and outputs could land on the user's files."""
    for folder in input_folders:
        if _inside(output_dir, folder):
            how = ("is" if os.path.realpath(output_dir) == os.path.realpath(folder)
                   else "is inside")
            raise UsageError(f"{output_dir}: the output folder {how} the input folder "
                             f"{folder}; choose a folder outside it")
        if _inside(folder, output_dir):
            raise UsageError(f"{output_dir}: the output folder contains the input folder "
                             f"{folder}; choose a folder outside it")
    out_real = os.path.realpath(output_dir).rstrip(os.sep) + os.sep
    for path in input_files:
        if (os.path.realpath(path) + os.sep).startswith(out_real):
            raise UsageError(f"{output_dir}: the output folder contains the input {path}; "
                             f"choose a folder outside the inputs")


def output_name(rel: str) -> str:
    """The report path of an input as a clean relative path (no '..', no leading '/')."""
    rel = os.path.normpath(rel if not os.path.isabs(rel) else os.path.basename(rel))
    parts = [p for p in rel.split(os.sep) if p not in ("", ".", "..")]
    return os.path.join(*parts) if parts else "photo"


def plan_outputs(inputs: Sequence[tuple[str, str]], output_dir: str, fmt: str,
                 input_roots: Sequence[str] = (),
                 guard_folders: Sequence[str] = ()) -> list[tuple[str, str, str | None, str | None]]:
    """(open path, report path) -> (open, report, output path or None, error or None).

    The output mirrors the report path under output_dir with the format's extension
    (`sub/a.jpg` -> `OUTPUT/sub/a.png`). Naming rule for inputs that would share an output
    (`a.jpg` and `a.png` in one folder): each of them keeps its own extension in the name,
    `a.jpg.png` and `a.png.png`; any that still collide are reported, not written.
    Refuses (UsageError) an output folder that equals, contains or sits inside an input folder
    (input_roots that are folders) or a guard folder (the folder of an --input_list), or that
    contains an input file.
    """
    check_output_folder(output_dir, [r for r in input_roots if os.path.isdir(r)]
                        + list(guard_folders), [o for o, _ in inputs])
    ext = images.output_extension(fmt)
    names = [output_name(rel) for _, rel in inputs]
    default = [os.path.splitext(n)[0] + ext for n in names]
    sharing: dict[str, int] = {}
    for d in default:
        sharing[d] = sharing.get(d, 0) + 1
    seen: dict[str, str] = {}
    out = []
    for (open_path, rel), name, d in zip(inputs, names, default):
        target = os.path.join(output_dir, d if sharing[d] == 1 else name + ext)
        err = None
        if target in seen:
            err = f"{open_path}: its output {target} is also the output of {seen[target]}; not written"
        else:
            seen[target] = open_path
        out.append((open_path, rel, None if err else target, err))
    return out


# ------------------------------------------------------------------------------------------
# The job folder: settings, records, recovery
# ------------------------------------------------------------------------------------------
LOCK_FILE = "idguardian.lock"
OWNED_GLOB = "idguardian_outputs*.jsonl"


class JobDir:
    """Progress of a job in its output folder (shared by every process and every restart).

    Ownership: the job writes only the files it names in its own records inside the folder.
    Before an output is first written its path (relative to the folder) is appended to
    OUTPUT/idguardian_outputs*.jsonl (`claim`); a file already at that path that no record names
    is never replaced (the photo is reported as a collision and the batch goes on). Temporary
    files (images.TMP_PREFIX) left by a crash are removed only in the folders of claimed outputs.
    One job at a time per folder: an exclusive lock on OUTPUT/idguardian.lock (each process of a
    multi-process job holds its own shard lock and a shared lock on it).
    """

    def __init__(self, output_dir: str, settings: str, allow_changed_settings: bool = False,
                 process_index: int = 0, process_count: int = 1):
        self.output_dir = output_dir
        self.settings = settings
        self._lock_fds: list[int] = []
        self._claim_lock = threading.Lock()
        try:
            os.makedirs(output_dir, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{output_dir}: cannot create the output folder ({e.strerror or e})") from None
        self._take_lock(process_index, process_count)
        try:
            self._open(allow_changed_settings, process_index, process_count)
        except BaseException:
            self.close()
            raise

    def _take_lock(self, pi: int, pc: int) -> None:
        import fcntl

        wanted = [(LOCK_FILE, fcntl.LOCK_EX if pc == 1 else fcntl.LOCK_SH)]
        if pc > 1:
            wanted.append((f"{LOCK_FILE}.p{pi:05d}-of-{pc:05d}", fcntl.LOCK_EX))
        for name, mode in wanted:
            path = os.path.join(self.output_dir, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise UsageError(f"{self.output_dir}: cannot write in the output folder "
                                 f"({e.strerror or e})") from None
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    # a file system without locks (some FUSE mounts): go on, and say so
                    sys.stderr.write(f"warning: {path}: cannot lock ({e.strerror or e}); make "
                                     f"sure no other job writes into {self.output_dir}\n")
                    self._lock_fds.append(fd)
                    continue
                os.close(fd)
                self.close()
                raise UsageError(f"{self.output_dir}: another idguardian-protect job is writing "
                                 f"into this folder (it holds {path}); wait for it to finish or "
                                 f"choose another output folder") from None
            self._lock_fds.append(fd)

    def close(self) -> None:
        """Release the folder's lock (the end of the job)."""
        for fd in self._lock_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._lock_fds = []

    def _open(self, allow_changed_settings: bool, process_index: int, process_count: int):
        output_dir, settings = self.output_dir, self.settings
        job_file = os.path.join(output_dir, JOB_FILE)
        if os.path.lexists(job_file):
            old = read_job_file(job_file)
            if old != settings and not allow_changed_settings:
                raise UsageError(
                    f"{output_dir}: holds a job with other settings ({old}, now {settings}); "
                    f"use another output folder, or --config.job.allow_changed_settings=true to "
                    f"redo its photos with the new settings")
        suffix = ("" if process_count == 1 else
                  f".p{process_index:05d}-of-{process_count:05d}")
        self.summary_path = os.path.join(output_dir, f"idguardian_summary{suffix}.jsonl")
        self.owned_path = os.path.join(output_dir, f"idguardian_outputs{suffix}.jsonl")
        if process_index == 0:
            try:
                jsonio.write_json_atomic(job_file, {"tool": "idguardian-protect",
                                                    "settings": settings, "created": time.time()})
            except OSError as e:
                raise UsageError(f"{job_file}: cannot write ({e.strerror or e})") from None
        self.done: dict[str, dict] = {}
        self.owned: set[str] = set()
        for path in sorted(glob.glob(os.path.join(output_dir, SUMMARY_GLOB))):
            for rec in read_jsonl(path):
                if rec.get("path"):
                    self.done[rec["path"]] = rec
                    if rec.get("output") and rec.get("status") in ("protected", "copied"):
                        self.owned.add(self._key(rec["output"]))
        for path in sorted(glob.glob(os.path.join(output_dir, OWNED_GLOB))):
            for rec in read_jsonl(path):
                if isinstance(rec.get("output"), str):
                    self.owned.add(os.path.normpath(rec["output"]))
        for path in (self.summary_path, self.owned_path):
            _end_torn_line(path)
        self._remove_stale_temporaries(time.time())

    def _key(self, target: str) -> str:
        """An output's path relative to the output folder (how claims are recorded)."""
        return os.path.normpath(os.path.relpath(os.path.abspath(target),
                                                os.path.abspath(self.output_dir)))

    def owns(self, target: str) -> bool:
        return self._key(target) in self.owned

    def claim(self, target: str) -> None:
        """Before writing `target`: record it as this job's output, or raise ImageWriteError
        when a file the job did not write is already there (it is never replaced)."""
        key = self._key(target)
        with self._claim_lock:
            if key in self.owned:
                return
            if os.path.lexists(target):
                raise images.ImageWriteError(
                    f"{target}: a file that idguardian-protect did not write is already there "
                    f"(no record of this folder's jobs names it); not replaced")
            with open(self.owned_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"output": key}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self.owned.add(key)

    def _remove_stale_temporaries(self, started: float) -> None:
        """Temporary files of writes cut short by a crash (the tool's own name pattern, older
        than this start, in the folders of outputs it claimed) go away; nothing else does."""
        folders = {os.path.dirname(os.path.join(self.output_dir, k)) for k in self.owned}
        folders.add(self.output_dir)
        for folder in sorted(folders):
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if not name.startswith(images.TMP_PREFIX):
                    continue
                path = os.path.join(folder, name)
                try:
                    if os.path.isfile(path) and not os.path.islink(path) \
                            and os.path.getmtime(path) < started - 1.0:
                        os.unlink(path)
                except OSError:
                    pass

    def finished(self, rel: str, input_sha: str) -> dict | None:
        """The record of a photo already finished with these settings: protected or copied (its
        output intact), or found to have no face. Failed photos are tried again."""
        old = self.done.get(rel)
        if not (old and old.get("settings") == self.settings
                and old.get("input_sha256") == input_sha):
            return None
        if old.get("status") == "no_face":
            return old
        if not (old.get("status") in ("protected", "copied") and old.get("output")
                and os.path.exists(old["output"])):
            return None
        try:
            return old if file_sha256(old["output"]) == old.get("output_sha256") else None
        except OSError:
            return None

    def adoptable(self, target: str | None, input_sha: str) -> bool:
        """An output renamed into place just before a crash: claimed by this folder's job, and
        its provenance (settings, input hash) matches."""
        if not target or not self.owns(target) or not os.path.exists(target) \
                or not target.endswith(".png"):
            return False
        try:
            from PIL import Image

            with Image.open(target) as im:
                prov = json.loads(im.info.get("idguardian", "{}"))
        except Exception:  # noqa: BLE001 - a damaged file is simply redone
            return False
        return (isinstance(prov, dict) and prov.get("settings") == self.settings
                and prov.get("input_sha256") == input_sha)

    def append(self, rec: dict) -> None:
        with open(self.summary_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_job_file(path: str) -> str:
    """The settings hash of an OUTPUT/idguardian_job.json; UsageError when it is not one."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not a readable job file of idguardian-protect ({e}); move it "
                         f"away or choose another output folder") from None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), str):
        raise UsageError(f"{path}: not a job file of idguardian-protect (no settings hash); move "
                         f"it away or choose another output folder")
    return data["settings"]


def read_jsonl(path: str) -> list[dict]:
    """The JSON-object lines of a file; a line cut by a crash, or any other line that is not a
    JSON object, is passed over."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except OSError:
        pass
    return out


def _end_torn_line(path: str) -> None:
    """A file whose last line was cut by a crash gets a newline, so that the next record
    appended starts a line of its own (instead of being swallowed by the torn one)."""
    try:
        with open(path, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())
    except FileNotFoundError:
        pass


def merge_reports(output_dir: str) -> dict:
    """Every process's latest record per photo -> OUTPUT/idguardian_report.json (process 0)."""
    latest: dict[str, dict] = {}
    for path in sorted(glob.glob(os.path.join(output_dir, SUMMARY_GLOB))):
        for rec in read_jsonl(path):
            if rec.get("path"):
                latest[rec["path"]] = rec
    counts: dict[str, int] = {}
    for rec in latest.values():
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
    report = {"photos": len(latest), "counts": counts,
              "records": [latest[k] for k in sorted(latest)]}
    path = os.path.join(output_dir, REPORT_FILE)
    try:
        jsonio.write_json_atomic(path, report)
    except OSError as e:  # a full or read-only disk: the per-photo records still stand
        sys.stderr.write(f"warning: {path}: cannot write the report ({e.strerror or e})\n")
        return {"photos": len(latest), "counts": counts, "error": str(e)}
    return {"photos": len(latest), "counts": counts}


# ------------------------------------------------------------------------------------------
# Photos
# ------------------------------------------------------------------------------------------
def write_no_face(rec: dict, photo: images.Photo, target: str, config, claim=None) -> None:
    """claim(target): called before writing (JobDir.claim: records the output as the job's
    own, or raises ImageWriteError when a file the tool did not write is there)."""
    if config.output.on_no_face == "copy":
        if claim is not None:
            claim(target)
        images.write_photo(target, photo.rgb, photo, config.output.format,
                           config.output.strip_metadata, int(config.output.quality),
                           keep_location=bool(config.output.get("keep_location", False)))
        rec["status"] = "copied"
        rec["output_sha256"] = file_sha256(target)
        rec["notes"].append("no face found: copied unchanged, NOT protected")
    else:
        rec["status"] = "no_face"
        rec["output"] = None
        rec["notes"].append("no face found: not protected, nothing written "
                            "(--config.output.on_no_face=copy writes it unchanged)")


def write_protected(rec: dict, res: results.PhotoResult, photo: images.Photo, target: str, config,
                     eps: float, claim=None) -> None:
    """Write the protected photo (claim as in write_no_face); its PNG provenance carries the settings
    hash and input hash that let a restart adopt it (JobDir.adoptable)."""
    provenance = {"idguardian": json.dumps({"version": __version__, "settings": rec.get("settings"),
                                            "input_sha256": rec.get("input_sha256"),
                                            "budget_255": int(round(eps * 255))})}
    if claim is not None:
        claim(target)
    images.write_photo(target, res.protected, photo, config.output.format,
                       config.output.strip_metadata, int(config.output.quality),
                       extra_text=None if config.output.strip_metadata else provenance,
                       keep_location=bool(config.output.get("keep_location", False)))
    back = images.read_photo(target, apply_exif_orientation=True)
    change = int(np.abs(back.rgb.astype(np.int16) - photo.rgb.astype(np.int16)).max())
    budget = int(round(eps * 255))
    rec.update(status="protected", faces=[dataclasses.asdict(f) for f in res.faces],
               psnr=None if res.psnr is None else round(images.psnr(back.rgb, photo.rgb), 3),
               max_change=change, budget_255=budget, output_sha256=file_sha256(target),
               final_loss=None if not res.losses else res.losses[-1])
    if change > budget:
        if config.output.format == "png":
            raise AssertionError(f"{target}: written pixels differ by {change} > budget {budget}")
        rec["notes"].append(f"lossy {config.output.format} output: max change {change} exceeds the "
                            f"budget {budget} (compression)")
