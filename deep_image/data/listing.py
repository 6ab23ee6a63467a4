"""Examples listed once, read many times: the machinery official.py's readers share.

- ListedSource: examples in flat arrays, each a file or a member of an uncompressed tar read in
  place (seek + read; an archive is never held in memory).
- tar_index / folder_index: list a tar's members (nested tars too) or a folder of class
  folders once, cached beside the data and rebuilt when it changes.
- unpacked: a compressed archive (.tgz), which cannot be read at random, unpacked once.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib

import numpy as np

from deep_image.data import decode
from deep_image.data.archives import IMAGE_EXTENSIONS
from deep_image.data.errors import DataError

# ----------------------------------------------------------------------------- listed sources

class ListedSource:
    """A random-access source over examples listed in flat arrays: example i is the file
    `base/names[i]` or, with `tar`, the `sizes[i]` bytes at `offsets[i]` of that uncompressed
    tar, read in place (seek + read; the archive is never held in memory). Arrays rather than
    per-example tuples: ILSVRC's 1.28M examples stay a few tens of MB, cheap to cache and to
    hand to worker processes. `boxes`: pixel (xmin, ymin, xmax, ymax) per example."""

    def __init__(self, name: str, class_names, labels, names, *, base: str = "",
                 tar: str = "", offsets=None, sizes=None, boxes=None, check_files=False):
        self.name, self.class_names = name, list(class_names)
        self.skips = decode.SkipCounter(name)
        labels = np.asarray(labels, np.int64)
        names = np.asarray(names)
        if names.dtype.kind == "U":
            names = np.char.encode(names, "utf-8")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise DataError(f"{name}: a label is outside the {len(self.class_names)} classes")
        keep = np.ones(len(names), bool)
        if check_files:      # lists written by hand may name files that are not there
            for i, n in enumerate(names):
                self.skips.read()
                if not os.path.isfile(os.path.join(base, n.decode())):
                    keep[i] = False
                    self.skips.skip(os.path.join(base, n.decode()), "listed but missing")
        if not keep.any():
            raise DataError(f"{name}: none of the {len(names)} listed images exist "
                            f"in {base or tar}; check config.data.root")
        self._names, self._labels = names[keep], labels[keep]
        self._base, self._tar = base, tar
        self._offsets = None if offsets is None else np.asarray(offsets, np.int64)[keep]
        self._sizes = None if sizes is None else np.asarray(sizes, np.int64)[keep]
        self._boxes = None if boxes is None else np.asarray(boxes, np.float64)[keep]

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def __getitem__(self, index: int):
        i = int(index)
        self.skips.read()
        what = self._names[i].decode()
        if self._tar:
            image, reason = self._read_member(i)
            what = f"{self._tar}:{what}"
        else:
            what = os.path.join(self._base, what)
            image, reason = decode.read(what)
        if image is None:
            gone = self._tar if self._tar else os.path.dirname(what)
            if not os.path.exists(gone):      # present at start: the data has gone
                raise DataError(f"{gone} has vanished during the run (it held {what}); is the "
                                "data directory still mounted? Restore it and rerun the same "
                                "command to resume")
            self.skips.skip(what, reason)
            return None
        out = {"image": image, "label": int(self._labels[i])}
        if self._boxes is not None:
            out["bbox"] = tuple(float(v) for v in self._boxes[i])
        return out

    def _read_member(self, i: int):
        size = int(self._sizes[i])
        try:     # one open per read: safe in every read thread and worker process
            with open(self._tar, "rb") as f:
                f.seek(int(self._offsets[i]))
                data = f.read(size)
        except OSError as e:
            return None, f"cannot read: {e.strerror}"
        if len(data) < size:
            return None, "cut short: the tar is shorter than when it was indexed"
        image = decode.decode(data)
        return (image, "") if image is not None else (None, "not a decodable image")


# ----------------------------------------------------------------------------- listing caches

INDEX_VERSION = 1     # bump when an index's content changes: every cached index is rebuilt


def cache_dir(beside: str) -> str:
    """Where what we derive from the data in folder `beside` (indexes, unpacked archives)
    lives: `beside/.deep_image`, or under the user's cache when that folder is read-only."""
    beside = os.path.abspath(beside)
    if os.access(beside, os.W_OK):
        return os.path.join(beside, ".deep_image")
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(home, "deep_image", hashlib.sha1(beside.encode()).hexdigest()[:16])


def file_stamp(path: str) -> str:
    """Changes when the file is replaced or rewritten (its size and modification time)."""
    st = os.stat(path)
    return f"v{INDEX_VERSION}:{st.st_size}:{st.st_mtime_ns}"


def folder_stamp(path: str) -> str:
    """Changes when a class folder (a subfolder of `path`) gains, loses or renames a file, or
    when one is added or removed: each such change moves a folder's modification time."""
    h = hashlib.sha1(str(os.stat(path).st_mtime_ns).encode())
    with os.scandir(path) as entries:
        for e in sorted(entries, key=lambda e: e.name):
            if e.is_dir():
                h.update(f"{e.name}:{e.stat().st_mtime_ns};".encode())
    return f"v{INDEX_VERSION}:{h.hexdigest()}"


def cached_index(path: str, kind: str, stamp: str, build) -> dict:
    """The arrays `build()` returns for the data at `path`, kept in an .npz beside it (see
    cache_dir) and rebuilt when `stamp` changes, so a start lists 1.28M images in a second."""
    parent, base = os.path.split(os.path.abspath(path))
    file = os.path.join(cache_dir(parent), f"{base}.{kind}.npz")
    try:
        with np.load(file, allow_pickle=False) as z:
            if str(z["stamp"]) == stamp:
                return {k: z[k] for k in z.files if k != "stamp"}
        logging.warning("%s has changed since it was indexed; indexing it again", path)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass      # no index yet, or an unreadable one: build it
    arrays = build()
    os.makedirs(os.path.dirname(file), exist_ok=True)
    tmp = f"{file}.{os.getpid()}.tmp"     # whole or nothing: readers never see half an index
    with open(tmp, "wb") as f:
        np.savez(f, stamp=np.array(stamp), **arrays)
    os.replace(tmp, file)
    return arrays


def _names(values: list[str]) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=bytes) if values else np.zeros(0, "S1")


# ----------------------------------------------------------------------------- tars

def tar_index(path: str, nested: bool = False) -> dict:
    """`names`, `offsets`, `sizes` of every file in the uncompressed tar at `path`, cached.
    `nested`: the files of every tar inside it (ILSVRC's train tar of per-class tars), named
    `<inner tar stem>/<file>`, at absolute offsets in `path`, with `folders` (the sorted
    stems) and `folder_of` (each file's index in `folders`)."""
    def build():
        logging.warning("indexing %s once (a header read per image; the index is cached in "
                        "%s)", path, cache_dir(os.path.dirname(os.path.abspath(path))))
        with open(path, "rb") as f:
            members = _members(f, path, 0, os.path.getsize(path))
            if nested:  # the outer list comes first: the inner reads move the shared position
                inner = sorted((name[:-len(".tar")], start, size)
                               for name, start, size in members if name.endswith(".tar"))
                members, folder_of = [], []
                for k, (folder, start, size) in enumerate(inner):
                    files = _members(f, f"{path} (member {folder}.tar)", start, start + size)
                    members += [(f"{folder}/{n}", o, s) for n, o, s in files]
                    folder_of += [k] * len(files)
        out = {"names": _names([m[0] for m in members]),
               "offsets": np.array([m[1] for m in members], np.int64),
               "sizes": np.array([m[2] for m in members], np.int64)}
        if nested:
            out["folders"] = _names([folder for folder, _, _ in inner])
            out["folder_of"] = np.array(folder_of, np.int32)
        return out
    return cached_index(path, "nested" if nested else "tar", file_stamp(path), build)


def _members(f, what: str, start: int, end: int) -> list[tuple[str, int, int]]:
    """(name, absolute offset, size) of each file of the tar at bytes [start, end) of `f`."""
    f.seek(start)     # tarfile counts offsets from the position it starts at: absolute ones
    try:
        with tarfile.open(fileobj=f, mode="r:") as t:
            files = [(m.name[2:] if m.name.startswith("./") else m.name, m.offset_data, m.size)
                     for m in t if m.isfile()]
            last = max((m.offset_data + m.size for m in t.members), default=start)
    except tarfile.TarError as e:
        raise DataError(f"{what} is not a readable tar ({e}): it is truncated or corrupt; "
                        "download it again") from None
    # tarfile stops quietly at a header cut short; a whole tar ends with a zero block after
    # its last member's data (padded to 512 bytes)
    tail = -(-last // 512) * 512
    f.seek(tail)
    block = f.read(512) if tail + 512 <= end else b""
    if last > end or len(block) < 512 or any(block):
        raise DataError(f"{what} is truncated or corrupt (no end-of-archive block after "
                        f"byte {last}); download it again")
    return files


def unpacked(archive: str) -> str:
    """The folder holding the compressed tar `archive` unpacked, unpacking it on first use: a
    .tgz cannot be read at random, so it is unpacked once into cache_dir beside it (into a
    temporary folder renamed into place when complete: an interrupted unpack leaves nothing),
    and again when the archive changes."""
    stem = re.sub(r"\.(tgz|tar\.gz|tar)$", "", os.path.basename(archive))
    parent = os.path.join(cache_dir(os.path.dirname(os.path.abspath(archive))), "unpacked")
    dest, stamp = os.path.join(parent, stem), file_stamp(archive)
    if _read_text(os.path.join(dest, ".unpacked_from")) == stamp:
        return dest
    logging.warning("unpacking %s into %s (once: a compressed archive cannot be read at "
                    "random; later runs reuse it)", archive, dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{stem}.partial-", dir=parent)
    try:
        with tarfile.open(archive, "r:*") as t:
            t.extractall(tmp, filter="data")
        with open(os.path.join(tmp, ".unpacked_from"), "w") as f:
            f.write(stamp)
        if os.path.isdir(dest):      # unpacked from an older copy of the archive
            shutil.rmtree(dest)
        try:
            os.rename(tmp, dest)
        except OSError:              # another process unpacked it at the same time
            if _read_text(os.path.join(dest, ".unpacked_from")) != stamp:
                raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"cannot unpack {archive} ({type(e).__name__}: {e}): it is truncated "
                        "or corrupt; download it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def folder_index(path: str) -> dict:
    """`names` (`<class folder>/<file>`) of the images in each subfolder of `path`, sorted,
    with `folders` and `folder_of` as tar_index's; cached (listing ILSVRC's 1.28M files takes
    a while on a network file system)."""
    def build():
        logging.warning("listing the images in %s once (the list is cached)", path)
        names, folder_of = [], []
        with os.scandir(path) as entries:
            folders = sorted(e.name for e in entries if e.is_dir() and e.name[0] != ".")
        for k, folder in enumerate(folders):
            with os.scandir(os.path.join(path, folder)) as entries:
                files = sorted(f"{folder}/{e.name}" for e in entries
                               if e.name.lower().endswith(IMAGE_EXTENSIONS))
            names += files
            folder_of += [k] * len(files)
        return {"names": _names(names), "folders": _names(folders),
                "folder_of": np.array(folder_of, np.int32)}
    return cached_index(path, "folder", folder_stamp(path), build)
