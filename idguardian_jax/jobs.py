"""Dataset jobs: inputs, sharding over processes, streaming, batching by shape, resume.

One job protects a list of photo files into an output folder. The same code runs on a laptop
(one process, one device) and on a pod (many processes under `jax.distributed`, many devices):

- **Inputs**: files and folders, a file list (.txt, one path a line), or a manifest (.csv with a
  `path` column, .jsonl with a "path" key); paths in a list are relative to the list's folder.
- **Sharding**: each process takes the photos whose relative path hashes to its index
  (sha256(path) mod process count): disjoint, deterministic, independent of listing order, and
  stable across restarts.
- **Streaming**: a grain pipeline reads, decodes and prepares photos (faces found, views planned,
  clean embeddings) in background threads while the devices run PGD; prepared photos wait in a
  buffer per signature (views.PhotoPlan) until a full batch of one signature is ready.
- **Global mesh**: every PGD call spans all devices of all processes. Before each call the
  processes agree (one small all-gather) on the signature to run: the one with the most photos
  ready anywhere; processes with none of it contribute dummy rows. The per-device batch is fixed,
  so results do not depend on the number of processes or devices.
- **Resume**: each finished photo's record is appended (fsync) to the process's summary JSONL
  right after its output is renamed into place; the PNG also carries its settings and input hash.
  A restarted job skips photos with a record and an intact output, and adopts an output written
  just before a crash (matching provenance) without recomputing it; outputs are written by
  atomic rename to a fixed path, so nothing is lost or duplicated. The job's settings are kept in
  OUTPUT/idguardian_job.json; a rerun with other settings is refused unless allowed, and a job
  file that cannot be read is refused (never overwritten). A record line cut by a crash is ended
  before the next is appended.
- **Ownership**: outputs are claimed in OUTPUT/idguardian_outputs*.jsonl before they are first
  written; a file there that no record names is never replaced (see JobDir). One job per folder
  (OUTPUT/idguardian.lock, flock).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from idguardian_jax import images, writer
from idguardian_jax.checkpoints.cache import file_sha256

from idguardian_jax.errors import UsageError
from idguardian_jax.settings import settings_hash


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------
def read_input_list(path: str) -> list[tuple[str, str]]:
    """(path to open, path to report) from a .txt file list, a .csv (column `path`) or a .jsonl
    manifest (key "path"). Relative paths are relative to the list's folder."""
    base = os.path.dirname(os.path.abspath(path))
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, encoding="utf-8") as fh:
            if ext == ".csv":
                reader = csv.DictReader(fh)
                if "path" not in (reader.fieldnames or []):
                    raise UsageError(f"{path}: a CSV manifest needs a 'path' column")
                entries = [row["path"] for row in reader if row.get("path")]
            elif ext == ".jsonl":
                entries = []
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            entry = json.loads(line)["path"]
                        except (json.JSONDecodeError, KeyError, TypeError, IndexError):
                            raise UsageError(f"{path}: line {n} is not a JSON object with a "
                                             f"\"path\"") from None
                        if not isinstance(entry, str) or not entry:
                            raise UsageError(f"{path}: line {n}: \"path\" must be a non-empty "
                                             f"string, got {entry!r}")
                        entries.append(entry)
            else:
                entries = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
    except OSError as e:
        raise UsageError(f"{path}: cannot read the input list ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: the input list is not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise UsageError(f"{path}: not a readable CSV manifest ({e})") from None
    return [_list_entry(base, p) for p in entries]


def _list_entry(base: str, p: str) -> tuple[str, str]:
    """(path to open, report path) of a list entry: reported relative to the list's folder when
    it lies inside it (written relative or absolute alike), else by its file name."""
    full = p if os.path.isabs(p) else os.path.join(base, p)
    rel = os.path.relpath(os.path.abspath(full), base)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        rel = os.path.basename(full)
    return full, rel


def shard_of(rel: str, count: int) -> int:
    """The process that owns a photo: sha256 of its relative path mod the process count."""
    return int(hashlib.sha256(rel.encode("utf-8")).hexdigest()[:16], 16) % count


# ------------------------------------------------------------------------------------------
# Agreement between processes
# ------------------------------------------------------------------------------------------
_PROPOSAL_BYTES = 16384


def agree(proposal: tuple[int, str] | None, done_count: int) -> tuple[str | None, list[int]]:
    """All processes: each proposes (photos ready, signature JSON) or None (nothing left).
    Returns the signature to run (most photos ready, ties to the lowest process) or None when
    every process is done, and every process's count of finished photos."""
    if jax.process_count() == 1:
        return (None if proposal is None else proposal[1]), [done_count]
    from jax.experimental import multihost_utils

    buf = np.zeros(_PROPOSAL_BYTES + 16, np.uint8)
    if proposal is not None:
        blob = proposal[1].encode()
        if len(blob) > _PROPOSAL_BYTES:
            raise ValueError("signature too long to share between processes")
        buf[:8] = np.frombuffer(np.int64(proposal[0] + 1).tobytes(), np.uint8)
        buf[16:16 + len(blob)] = np.frombuffer(blob, np.uint8)
    buf[8:16] = np.frombuffer(np.int64(done_count).tobytes(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(buf))
    best, best_count, done = None, 0, []
    for row in every:
        count = int(np.frombuffer(row[:8].tobytes(), np.int64)[0]) - 1
        done.append(int(np.frombuffer(row[8:16].tobytes(), np.int64)[0]))
        if count > best_count:
            best_count = count
            best = row[16:].tobytes().rstrip(b"\0").decode()
    return best, done


def signature_json(sig: tuple) -> str:
    h, w, groups = sig
    return json.dumps([h, w, [[name, [[g.window[0], g.window[1], g.n_down, g.rows, g.cols, g.count]
                                      for g in gs]] for name, gs in groups]])


def groups_from_json(text: str):
    from idguardian_jax.views import ViewGroup

    h, w, groups = json.loads(text)
    return h, w, {name: tuple(ViewGroup((a, b), n, r, c, k) for a, b, n, r, c, k in gs)
                  for name, gs in groups}


# ------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Ready:
    rec: dict
    photo: images.Photo
    target: str
    prepared: Any


class _Progress:
    def __init__(self, total: int, every_s: float, stream=sys.stderr, bar: bool = True):
        self.total, self.every_s, self.stream = total, every_s, stream
        self.done = self.failed = 0
        self.t0 = self.last = time.time()
        self.bar = None
        if bar and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="photo", file=stream, dynamic_ncols=True)

    def update(self, rec: dict) -> None:
        self.done += 1
        self.failed += rec["status"] == "error"
        msg = f"{rec['path']}: {rec['status']}"
        dist = [f.get("distance_after") for f in rec.get("faces") or []
                if f.get("distance_after") is not None]
        if dist:
            msg += f", distance after {min(dist):.3f}"
        if rec.get("psnr") is not None:
            msg += f", PSNR {rec['psnr']:.1f} dB"
        if rec.get("error"):
            msg = f"{rec['path']}: error: {rec['error']}"
        if self.bar is not None:
            self.bar.set_postfix_str(msg[-60:])
            self.bar.update(1)
            return
        elapsed = time.time() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        self.stream.write(f"[{self.done}/{self.total} eta {eta:.0f}s] {msg}\n")
        self.stream.flush()

    def periodic(self, done_all: list[int]) -> None:
        now = time.time()
        if now - self.last < self.every_s or len(done_all) < 2:
            return
        self.last = now
        el = now - self.t0
        rates = ", ".join(f"p{i} {d / el:.2f}" for i, d in enumerate(done_all))
        self.stream.write(f"throughput photos/s: total {sum(done_all) / el:.2f} ({rates}); "
                          f"failures here {self.failed}\n")
        self.stream.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run_job(planned: Sequence[tuple[str, str, str | None, str | None]], output_dir: str, config,
            protector, progress: bool = True) -> dict:
    """Protect `planned` (open path, report path, output path or None, error or None; the whole
    list, every process passes the same) into output_dir. Returns this process's summary."""
    pi, pc = jax.process_index(), jax.process_count()
    settings = settings_hash(config)
    job = config.get("job", {}) or {}
    jobdir = writer.JobDir(output_dir, settings, bool(job.get("allow_changed_settings", False)), pi, pc)
    mine = [p for p in planned if shard_of(p[1], pc) == pi]
    fmt = config.output.format
    notes = [] if fmt == "png" else [images.LOSSY_WARNING.format(fmt=fmt.upper())]
    counts: dict[str, int] = {}
    records: list[dict] = []
    prog = _Progress(len(mine), float(job.get("report_every_s", 30.0)), bar=progress) if progress else None

    def emit(rec: dict) -> None:
        rec.setdefault("settings", settings)
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
        records.append(rec)
        if rec["status"] != "skipped":
            try:
                jobdir.append(rec)
            except OSError as e:
                sys.stderr.write(f"warning: {jobdir.summary_path}: cannot record progress ({e})\n")
        if prog:
            prog.update(rec)

    def load(entry):
        """Runs in the input pipeline's threads: read, check progress, find faces."""
        open_path, rel, target, err = entry
        rec: dict[str, Any] = {"path": rel, "input": open_path, "output": target, "status": None,
                               "error": err, "faces": [], "settings": settings}
        if err:
            rec["status"] = "error"
            return ("done", rec)
        try:
            photo = images.read_photo(open_path, max_pixels=int(config.output.max_pixels),
                                      allow_animated=False)
            rec["input_sha256"] = file_sha256(open_path)
        except (images.ImageReadError, OSError) as e:
            rec["status"], rec["error"] = "error", str(e)
            return ("done", rec)
        old = jobdir.finished(rel, rec["input_sha256"])
        if old is not None:
            return ("done", dict(old, status="skipped", previous_status=old["status"]))
        if jobdir.adoptable(target, rec["input_sha256"]):
            rec.update(status="protected", recovered=True, output_sha256=file_sha256(target),
                       notes=["finished before an interruption; adopted, not recomputed"])
            return ("done", rec)
        rec["width"], rec["height"] = photo.width, photo.height
        rec["notes"] = list(photo.notes) + notes
        try:
            prepared = protector.prepare(0, photo.rgb)
        except Exception as e:  # noqa: BLE001 - one photo's failure must not stop the job
            rec["status"], rec["error"] = "error", f"{open_path}: {type(e).__name__}: {e}"
            return ("done", rec)
        if prepared.plan is None:
            try:
                writer.write_no_face(rec, photo, target, config, claim=jobdir.claim)
            except images.ImageWriteError as e:
                rec["status"], rec["error"] = "error", str(e)
            return ("done", rec)
        return ("ready", _Ready(rec, photo, target, prepared))

    try:
        return _run(mine, load, emit, records, counts, jobdir, prog, protector, config, job,
                    output_dir, pi, pc)
    finally:
        jobdir.close()


def _run(mine, load, emit, records, counts, jobdir, prog, protector, config, job, output_dir,
         pi, pc) -> dict:
    stream = _pipeline(mine, load, int(job.get("read_threads", 2)), int(job.get("prefetch", 8)))
    chunk = _local_chunk(protector)
    buffers: dict[str, list[_Ready]] = {}
    exhausted = False
    idle_s = busy_s = 0.0
    while True:
        t_wait = time.time()
        while not exhausted and not any(len(b) >= chunk for b in buffers.values()):
            try:
                kind, item = next(stream)
            except StopIteration:
                exhausted = True
                break
            if kind == "done":
                emit(item)
            else:
                buffers.setdefault(signature_json(item.prepared.plan.signature), []).append(item)
        idle_s += time.time() - t_wait
        ready = {s: b for s, b in buffers.items() if b}
        proposal = None
        if ready:
            sig = max(ready, key=lambda s: (len(ready[s]), s))
            if len(ready[sig]) >= chunk or exhausted:
                proposal = (len(ready[sig]), sig)
        chosen, done_all = agree(proposal, len(records))
        if prog:
            prog.periodic(done_all)
        if chosen is None:
            if exhausted and not any(buffers.values()):
                break
            continue
        take = buffers.get(chosen, [])[:chunk]
        buffers[chosen] = buffers.get(chosen, [])[chunk:]
        t_run = time.time()
        outs = protector.run_group([r.prepared for r in take], groups_from_json(chosen))
        for i, r in enumerate(take):
            _finish_one(r, outs.get(i), protector, config, emit, jobdir.claim)
        busy_s += time.time() - t_run
    if prog:
        prog.close()
    if pc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("idguardian job done")
    report = writer.merge_reports(output_dir) if pi == 0 else None
    protected_faces = [f for r in records if r["status"] == "protected" for f in r.get("faces") or []]
    return {"photos": len(records), "counts": counts, "faces": len(protected_faces),
            "faces_past_threshold": sum(1 for f in protected_faces if f.get("protected")),
            "summary_file": jobdir.summary_path, "records": records,
            "input_wait_seconds": round(idle_s, 3), "device_seconds": round(busy_s, 3),
            "report": report}


def _local_chunk(protector) -> int:
    from idguardian_jax import parallel

    return parallel.local_batch_size(protector.mesh, protector.cfg.per_device)


def _pipeline(entries, load, threads: int, prefetch: int):
    """Iterator of load(entry) in order, computed ahead in `threads` background threads (grain)."""
    if not entries:
        return iter(())
    import grain

    ds = grain.MapDataset.source(list(entries)).map(load)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads),
                                                     prefetch_buffer_size=max(1, prefetch))))


def _finish_one(r: _Ready, out, protector, config, emit, claim=None) -> None:
    t1 = time.time()
    rec = r.rec
    try:
        res = protector.finish(r.prepared, out)
        writer.write_protected(rec, res, r.photo, r.target, config, protector.cfg.pgd.eps,
                              claim=claim)
    except images.ImageWriteError as e:
        rec["status"], rec["error"] = "error", str(e)
    except Exception as e:  # noqa: BLE001
        rec["status"], rec["error"] = "error", f"{rec['input']}: {type(e).__name__}: {e}"
    rec["seconds"] = round(time.time() - t1, 3)
    emit(rec)
