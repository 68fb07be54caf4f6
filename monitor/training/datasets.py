"""Dataset readers (TSV manifest, FaceForensics++, Celeb-DF v2, DFDC) into one typed clip record."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from monitor.errors import InputError

logger = logging.getLogger(__name__)

Label = Literal["real", "fake", "attack"]
LABELS: tuple[str, ...] = ("real", "fake", "attack")


@dataclass(frozen=True)
class ClipRecord:
    """One labelled clip. ``group`` keeps clips that share footage or identity together
    when splitting; ``pair`` names the real clip a fake was made from, when known."""

    path: Path
    label: Label
    group: str
    method: str = ""
    pair: Path | None = None
    rel: str = ""  # path as written in the source (manifest-relative), for reports

    @property
    def is_fake(self) -> bool:
        return self.label != "real"


def _label(value: str, where: str) -> Label:
    v = value.strip().lower()
    if v not in LABELS:
        raise InputError(f"{where}: label {value!r} is not one of {', '.join(LABELS)}")
    return v  # type: ignore[return-value]


def identity_group(rel: str) -> str:
    """Split group of a manifest path: the first path component, except for paired live-swap
    folders (``*_swap_cropped``/``*_orig_cropped``), where it is the swapped identity, so a
    swap and its original always fall on the same side."""
    parts = rel.split("/")
    folder = parts[0]
    if len(parts) > 1 and folder.endswith(("_swap_cropped", "_orig_cropped")):
        stem = Path(parts[-1]).stem
        for suffix in ("_swap", "_orig"):
            stem = stem.removesuffix(suffix)
        identity = stem.rsplit("_", 1)[0]
        return f"{folder.split('_')[0]}:{identity}"
    return folder


def _pair_of(rel: str, known: set[str]) -> str | None:
    """The real clip a paired fake was made from, by the naming conventions of data/dev."""
    candidates = [
        rel.replace("_swap_cropped/", "_orig_cropped/").replace("_swap.", "_orig."),
        str(Path(rel).with_name("real" + Path(rel).suffix)),
        str(Path(rel).with_name("real.mov")),
        str(Path(rel).with_name("orig.webm")),
    ]
    for c in candidates:
        if c != rel and c in known:
            return c
    return None


def _unquote(cell: str) -> str:
    """A cell a spreadsheet quoted whole (``"a b.mp4"``, inner quotes doubled) as its text."""
    if len(cell) >= 2 and cell[0] == cell[-1] == '"':
        return cell[1:-1].replace('""', '"')
    return cell


def manifest_rows(manifest: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` for each row of a TSV manifest whose header holds at least
    ``path`` and ``label``; there must be a row, and no path twice.

    UTF-8 text as spreadsheets export it is accepted: a byte-order mark, CRLF line ends, header
    names in any case or padded with spaces, blank lines, comment lines (after the header, a
    first cell starting with ``#``), and cells quoted whole. Cells are
    stripped. Other quotes are text, as in any TSV: a stray ``"`` cannot swallow the lines after it."""
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header: list[str] = []
            rows: list[tuple[int, dict[str, str]]] = []
            for r in reader:
                cells = [_unquote(v.strip()) for v in r]
                if not any(cells) or (header and cells[0].startswith("#")):
                    continue  # blank, or a comment line (after the header): a row commented out
                if not header:
                    header = [h.lower() for h in cells]
                    named = [h for h in header if h]
                    twice = sorted({h for h in named if named.count(h) > 1})
                    if twice:  # the last column of the name had silently won
                        raise InputError(f"{manifest}:{reader.line_num}: column {', '.join(map(repr, twice))} named twice in the header")
                    continue
                # A short row reads as empty cells, so it fails on its label. A longer one (a tab in
                # a path, a shifted row) was cut to the header's length without a word.
                if any(cells[len(header):]):
                    raise InputError(
                        f"{manifest}:{reader.line_num}: {len(cells)} cells, but the header names {len(header)} columns "
                        "(a tab inside a cell? quote the cell)"
                    )
                rows.append((reader.line_num, dict(zip(header, cells + [""] * (len(header) - len(cells))))))
    except UnicodeDecodeError as exc:
        raise InputError(f"{manifest}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise InputError(f"{manifest}: {exc.strerror or exc}") from exc
    except csv.Error as exc:  # a line over the csv module's 128 KiB field limit: a DFDC metadata.json, say
        hint = " (DFDC's metadata.json is read with --source dfdc:PATH)" if manifest.suffix.lower() == ".json" else ""
        raise InputError(f"{manifest}: not a tab-separated manifest ({exc}){hint}") from exc
    missing = {"path", "label"} - set(header)
    if missing:
        raise InputError(f"{manifest}: needs `path` and `label` columns, has {sorted(h for h in header if h)}")
    if not rows:
        raise InputError(f"{manifest}: no clip rows")
    first_line: dict[str, int] = {}
    for line, r in rows:
        if not r.get("path"):
            raise InputError(f"{manifest}:{line}: empty path")
        r["path"] = _relative_path(r["path"], f"{manifest}:{line}")
        # Compared once normalised (``./a.mp4`` is ``a.mp4``): a repeat would be scanned, and
        # trained on, twice.
        if r["path"] in first_line:
            raise InputError(f"{manifest}:{line}: path {r['path']!r} repeats line {first_line[r['path']]}")
        first_line[r["path"]] = line
    return rows


def _relative_path(raw: str, where: str) -> str:
    """A manifest path as a clean POSIX path under the root: backslashes (manifests written on
    Windows) become slashes, and ``./`` and doubled slashes go, so that the first component, which
    names the clip's group, is the folder. An absolute path or one with ``..`` would not be under
    ``--root`` (the manifest would not move with its data, and its group would be ``..``)."""
    path = raw.replace("\\", "/")
    if path.startswith("/") or re.match(r"[A-Za-z]:/", path):
        raise InputError(f"{where}: path {raw!r} is absolute; paths are relative to the root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InputError(f"{where}: path {raw!r} leaves the root (..)")
    if not parts:
        raise InputError(f"{where}: path {raw!r} names no file")
    return "/".join(parts)


def read_tsv(manifest: Path, root: Path | None = None) -> list[ClipRecord]:
    """A TSV with a header and at least ``path`` (relative to ``root``) and ``label`` columns;
    ``method`` and ``group`` are used when present."""
    root = root if root is not None else manifest.parent
    rows = manifest_rows(manifest)
    known = {r["path"] for _, r in rows}
    out = []
    for i, r in rows:
        rel = r["path"]
        label = _label(r["label"], f"{manifest}:{i}")
        pair = _pair_of(rel, known) if label != "real" else None
        out.append(
            ClipRecord(
                path=root / rel,
                label=label,
                group=(r.get("group") or identity_group(rel)),
                method=(r.get("method") or "").strip(),
                pair=root / pair if pair else None,
                rel=rel,
            )
        )
    return out


# DeepFakeDetection is not among them: its videos (``01_02__exit_phone_room__YVGY8LOK.mp4``, originals
# in ``original_sequences/actors/``) are not named by the split pairs, and it has no official split.
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
FFPP_UNREAD = ("manipulated_sequences/DeepFakeDetection", "original_sequences/actors")


def read_ffpp(root: Path, split: Literal["train", "val", "test"] = "test", compression: str = "c23") -> list[ClipRecord]:
    """FaceForensics++ folder layout with the official splits (``splits/{train,val,test}.json``,
    lists of [target, source] id pairs): originals from ``original_sequences/youtube/<c>/videos``,
    fakes ``<target>_<source>.mp4`` from ``manipulated_sequences/<method>/<c>/videos`` for the
    methods of ``FFPP_METHODS``. DeepFakeDetection and its ``original_sequences/actors`` are not
    read (no official split puts them on one side); when present, a warning says how many videos
    that leaves out, so that a full download does not lose them silently."""
    split_file = root / "splits" / f"{split}.json"
    if not split_file.is_file():
        raise InputError(
            f"{split_file}: no such file; FF++'s official splits are dataset/splits/{{train,val,test}}.json "
            "in the FaceForensics repository: copy them to ROOT/splits/"
        )
    # A byte-order mark (a split file saved by Windows Notepad) is accepted, as in the TSV and Celeb-DF readers.
    pairs = json.loads(split_file.read_text(encoding="utf-8-sig"))
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(i, str) for i in p) for p in pairs):
        raise InputError(f"{split_file}: expected a list of [target, source] id pairs, as FF++'s official splits are")
    ids = sorted({i for p in pairs for i in p})
    group_of = _ffpp_groups(root, pairs)
    real_dir = root / "original_sequences" / "youtube" / compression / "videos"
    out: list[ClipRecord] = []
    missing = 0
    for vid in ids:
        path = real_dir / f"{vid}.mp4"
        if path.is_file():
            out.append(ClipRecord(path, "real", group_of[vid], "original", rel=str(path.relative_to(root))))
        else:
            missing += 1
    for method in FFPP_METHODS:
        mdir = root / "manipulated_sequences" / method / compression / "videos"
        if not mdir.is_dir():
            continue
        for a, b in pairs:
            for tgt, src in ((a, b), (b, a)):
                path = mdir / f"{tgt}_{src}.mp4"
                if path.is_file():
                    out.append(
                        ClipRecord(path, "fake", group_of[a], method, pair=real_dir / f"{tgt}.mp4", rel=str(path.relative_to(root)))
                    )
                else:
                    missing += 1
    if not out:
        raise InputError(
            f"{root}: no FF++ video of the {split} split at {compression}: expected "
            f"original_sequences/youtube/{compression}/videos/<id>.mp4 and "
            f"manipulated_sequences/<method>/{compression}/videos/<target>_<source>.mp4"
        )
    if missing:
        logger.warning("%s: %d videos of the %s split are not there at %s (read %d)", root, missing, split, compression, len(out))
    unread = [folder for folder in FFPP_UNREAD if (root / folder).is_dir()]
    if unread:
        skipped = sum(len(_video_files(root / folder / compression / "videos")) for folder in unread)
        folders = " and ".join(unread)
        logger.warning("%s: %s not read (no official split): %d videos at %s left out", root, folders, skipped, compression)
    return out


CELEBDF_FOLDERS = ("Celeb-real", "Celeb-synthesis", "YouTube-real")  # Celeb-synthesis holds the fakes


def _celebdf_record(root: Path, rel: str, label: Label) -> ClipRecord:
    name = Path(rel).stem
    parts = name.split("_")
    group = "celebdf:" + parts[0]
    method = "Celeb-synthesis" if label == "fake" else rel.split("/")[0]
    # Celeb-synthesis/id<target>_id<source>_<k>.mp4 puts the source's face into the target's
    # video Celeb-real/id<target>_<k>.mp4: its frame-aligned original, for real/fake pairing.
    pair = root / "Celeb-real" / f"{parts[0]}_{parts[2]}.mp4" if label == "fake" and len(parts) == 3 else None
    return ClipRecord(root / rel, label, group, method, pair=pair, rel=rel)


def _celebdf_test_list(test_list: Path) -> list[tuple[str, Label]]:
    """``(relative path, label)`` of each line of ``List_of_testing_videos.txt``."""
    out: list[tuple[str, Label]] = []
    for number, line in enumerate(test_list.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or fields[0] not in ("0", "1"):
            raise InputError(f"{test_list}:{number}: expected '<1|0> <relative path>', got {line.strip()!r}")
        flag, rel = fields
        out.append((_relative_path(rel.strip(), f"{test_list}:{number}"), "real" if flag == "1" else "fake"))
    return out


def read_celebdf(root: Path, split: Literal["train", "test"], test_list: Path | None = None) -> list[ClipRecord]:
    """Celeb-DF v2 by its official split. ``test``: the videos ``List_of_testing_videos.txt``
    names (``<1|0> <rel path>``, 1 = real). ``train``: every other video under Celeb-real/,
    YouTube-real/ (real) and Celeb-synthesis/ (fake), so that training never sees a test video.
    The identity (``idN``) is the split group."""
    test_list = test_list or root / "List_of_testing_videos.txt"
    listed = _celebdf_test_list(test_list)
    if split == "test":
        return [_celebdf_record(root, rel, label) for rel, label in listed]
    if split != "train":
        raise InputError(f"Celeb-DF split {split!r}: use train or test")
    held = {rel for rel, _ in listed}
    out: list[ClipRecord] = []
    seen_held = 0
    for folder in CELEBDF_FOLDERS:
        for p in _video_files(root / folder):
            rel = p.relative_to(root).as_posix()
            if rel in held:
                seen_held += 1
                continue
            out.append(_celebdf_record(root, rel, "fake" if folder == "Celeb-synthesis" else "real"))
    if held and not seen_held and out:
        # A list that matches no file here would keep nothing out: training on the test split.
        raise InputError(
            f"{test_list}: none of its {len(held)} videos is under {root}; it does not match this copy of "
            "Celeb-DF, so its test videos cannot be kept out of training"
        )
    if not out:
        raise InputError(
            f"{root}: no Celeb-DF training video: expected videos not on {test_list.name} under "
            f"{', '.join(f + '/' for f in CELEBDF_FOLDERS)}"
        )
    if seen_held < len(held):
        logger.warning("%s: %d of its %d test videos are not under %s", test_list, len(held) - seen_held, len(held), root)
    return out


def _ffpp_groups(root: Path, pairs: list[list[str]]) -> dict[str, str]:
    """Split group of each FF++ id: both videos of a pair (and every fake made from them) share
    one, named by the smallest id. FF++ cut some YouTube videos into several sequences (331 and
    332 show the same person), so with FF++'s ``conversion_dict.json`` (id -> "youtube_id index",
    from the FaceForensics repository's ``dataset/``, copied to ``ROOT/splits/`` or ``ROOT``) the
    sequences of one YouTube video share a group too."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the smallest id names the group

    for a, b in pairs:
        union(a, b)
    conversion = next((f for f in (root / "splits" / "conversion_dict.json", root / "conversion_dict.json") if f.is_file()), None)
    if conversion is None:
        logger.info("%s: no conversion_dict.json: sequences cut from one YouTube video may fall in different groups", root)
    else:
        data = json.loads(conversion.read_text(encoding="utf-8-sig"))
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in data.items()):
            raise InputError(f"{conversion}: expected FF++'s {{id: \"youtube_id index\"}} object")
        first_of: dict[str, str] = {}
        for vid, source in sorted(data.items()):
            if vid not in parent:  # another split's id
                continue
            video = source.split()[0]
            union(first_of.setdefault(video, vid), vid)
    return {i: f"ffpp:{find(i)}" for i in list(parent)}


DFDC_EXPECTED = "a DFDC metadata.json ({file: {label, original}}), a folder of them, or the test set's labels.csv (filename,label)"


def read_dfdc(source: Path) -> list[ClipRecord]:
    """DFDC from a part folder's ``metadata.json`` ({file: {label: REAL|FAKE, original}}), the
    part folder itself, a folder of part folders (the 50 ``dfdc_train_part_N``: read in name
    order, so one source is the whole training set), or the test set's ``labels.csv``. A fake is
    grouped with its original so both fall on one side of a split. Videos listed but not on disk
    (a partly extracted zip) are left out with one warning, not failed one by one in training."""
    if source.is_dir():
        if (source / "metadata.json").is_file():
            listed = _dfdc_metadata(source / "metadata.json")
        else:
            parts = sorted(p for p in source.iterdir() if not p.name.startswith(".") and (p / "metadata.json").is_file())
            if not parts:
                raise InputError(f"dfdc:{source}: no metadata.json in it or its sub-folders; expected {DFDC_EXPECTED}")
            listed = [r for part in parts for r in _dfdc_metadata(part / "metadata.json", f"{part.name}/")]
    elif source.is_file():
        listed = _dfdc_labels(source) if source.suffix.lower() == ".csv" else _dfdc_metadata(source)
    else:
        raise InputError(f"dfdc:{source}: no such file or folder; expected {DFDC_EXPECTED}")
    out = [r for r in listed if r.path.is_file()]
    if not out:
        what = f"none of its {len(listed)} listed videos is there" if listed else "lists no video"
        raise InputError(f"dfdc:{source}: {what}")
    if len(out) < len(listed):
        missing = len(listed) - len(out)
        logger.warning("dfdc:%s: %d of its %d listed videos are not there (read %d)", source, missing, len(listed), len(out))
    return out


def _dfdc_metadata(metadata: Path, part: str = "") -> list[ClipRecord]:
    """The clips one ``metadata.json`` lists. ``part`` (``dfdc_train_part_0/``, when several parts
    are read) prefixes each group and ``rel``, so names stay unique across parts; DFDC keeps a
    fake's original in the fake's part, so the pair still shares a group."""
    try:
        data = json.loads(metadata.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{metadata}: not JSON ({exc}); expected {DFDC_EXPECTED}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InputError(f"{metadata}: expected DFDC's {{file: {{label, original}}}} object")
    root = metadata.parent
    out = []
    for name, info in sorted(data.items()):
        kind = str(info.get("label", "")).strip().upper()
        if kind not in ("REAL", "FAKE"):
            raise InputError(f"{metadata}: {name}: label {info.get('label')!r} is not REAL or FAKE")
        label: Label = "fake" if kind == "FAKE" else "real"
        # Names are files of the part folder, as DFDC ships them: never a path out of it.
        name = _relative_path(str(name), f"{metadata}: {name}")
        original = _relative_path(str(info["original"]), f"{metadata}: {name}: original") if info.get("original") else None
        group = f"dfdc:{part}{original or name}"
        pair = root / original if original else None
        out.append(ClipRecord(root / name, label, group, "DFDC", pair=pair, rel=f"{part}{name}"))
    return out


def _dfdc_labels(labels: Path) -> list[ClipRecord]:
    """The DFDC test set's ``labels.csv`` (``filename,label``, 1 = fake, 0 = real), videos in its
    folder. It names no originals, so each video is a group of its own."""
    out: list[ClipRecord] = []
    first_line: dict[str, int] = {}
    try:
        with labels.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            if "filename" not in header or "label" not in header:
                raise InputError(f"{labels}: header {header} has no filename and label; expected {DFDC_EXPECTED}")
            name_at, label_at = header.index("filename"), header.index("label")
            for row in reader:
                cells = [c.strip() for c in row]
                if not any(cells):
                    continue
                where = f"{labels}:{reader.line_num}"
                cells += [""] * (len(header) - len(cells))
                flag = cells[label_at]
                if flag not in ("0", "1"):
                    raise InputError(f"{where}: label {flag!r} is not 1 (fake) or 0 (real)")
                if not cells[name_at]:
                    raise InputError(f"{where}: empty filename")
                name = _relative_path(cells[name_at], where)
                if name in first_line:
                    raise InputError(f"{where}: {name!r} repeats line {first_line[name]}")
                first_line[name] = reader.line_num
                label: Label = "fake" if flag == "1" else "real"
                out.append(ClipRecord(labels.parent / name, label, f"dfdc:{name}", "DFDC", rel=name))
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise InputError(f"{labels}: {reason}; expected {DFDC_EXPECTED}") from exc
    except csv.Error as exc:  # a field over the csv module's 128 KiB limit: a traceback, before
        raise InputError(f"{labels}: not a CSV file ({exc}); expected {DFDC_EXPECTED}") from exc
    return out


VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".avi", ".mkv", ".ts", ".m4v", ".mpg"}


def _video_files(top: Path) -> list[Path]:
    """Every video file under ``top``, sorted. Folder links are followed (``Path.rglob`` skips
    them, and a folder of links to each person's footage is a natural way to gather it), each
    folder once (by device and inode), so a link loop ends. Names starting with ``.`` are skipped:
    macOS ``._x.mp4`` resource forks and ``.Trash-1000`` folders hold no clips."""
    visited: set[tuple[int, int]] = set()
    out: list[Path] = []
    for folder, subfolders, files in os.walk(top, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            subfolders[:] = []
            continue
        if (st.st_dev, st.st_ino) in visited:
            subfolders[:] = []  # a loop, or a second link to a folder already read
            continue
        visited.add((st.st_dev, st.st_ino))
        # Sorted, so which of two links to one folder is read does not depend on the file system.
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in files:
            path = Path(folder, name)
            if not name.startswith(".") and path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
                out.append(path)
    return sorted(out)


def read_real(root: Path) -> list[ClipRecord]:
    """Every video under ``root``, all genuine (self-blending makes the fakes). Each top-level
    folder is one group (one person or source: keep a person's clips in one folder), and each
    video directly under ``root`` its own group, so that cross-fitting can split them. Folder
    links are followed; hidden names (``.``) are skipped."""
    if not root.is_dir():
        raise InputError(f"real:{root}: no such folder")
    out = []
    for p in _video_files(root):
        rel = p.relative_to(root)
        group = f"real:{rel.parts[0]}" if len(rel.parts) > 1 else f"real:{rel.as_posix()}"
        out.append(ClipRecord(p, "real", group, "genuine", rel=rel.as_posix()))
    if not out:
        raise InputError(f"real:{root}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) under it")
    return out


def refuse_duplicate_clips(records: Iterable[ClipRecord]) -> None:
    """Refuse the same file (by resolved path) twice in the concatenation of several sources, e.g.
    ``real:`` over a dataset's real folder next to that dataset's reader, or a repeated
    ``--source``: it would get two groups, land in two cross-fitting folds (a leak) and be
    sampled twice as often."""
    first: dict[Path, ClipRecord] = {}
    for r in records:
        key = r.path.resolve()
        if key in first:
            a = first[key]
            raise InputError(
                f"{key}: the same video is in two sources, as {a.rel or a.path} (group {a.group}) and "
                f"{r.rel or r.path} (group {r.group}); give each video once"
            )
        first[key] = r


DEFAULT_SPLIT = {"ffpp": "train", "celebdf": "train"}  # of a spec that names none
SOURCE_FORMS = {
    "tsv": "tsv:MANIFEST[:ROOT]",
    "ffpp": "ffpp:ROOT[:train|val|test[:raw|c23|c40]]",
    "celebdf": "celebdf:ROOT[:train|test]",
    "dfdc": "dfdc:PATH (a metadata.json, a part folder, a folder of part folders, or labels.csv)",
    "real": "real:DIR",
}


def read_source(spec: str) -> list[ClipRecord]:
    """One training source from a spec ``kind:path[:option]``:
    ``tsv:MANIFEST[:ROOT]``, ``ffpp:ROOT[:split[:compression]]`` (train, val or test; raw, c23
    or c40; default train at c23), ``celebdf:ROOT[:split]`` (train: every video not on the
    official test list, the default; or test: the list), ``dfdc:PATH`` (a metadata.json, a part
    folder, a folder of part folders, or the test set's labels.csv), ``real:DIR`` (every video
    under DIR, all genuine: self-blending alone). Extra fields are refused, and ``~`` in a path is
    the home folder (the shell does not expand it after ``kind:``). A missing or unreadable file
    is an InputError that names the source. Sources are not checked against each other: see
    ``refuse_duplicate_clips``."""
    try:
        return _read_source(spec)
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"source {spec!r}: {exc}") from exc


def _read_source(spec: str) -> list[ClipRecord]:
    kind, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    if kind not in SOURCE_FORMS or not parts:
        raise InputError(f"unknown training source {spec!r}: use tsv:, ffpp:, celebdf:, dfdc: or real:")
    # A POSIX path has no ':', so a field past the form's last (each ':' of the form opens one) is
    # a typo, not part of a path: refused rather than ignored.
    most = SOURCE_FORMS[kind].count(":")
    if len(parts) > most or not parts[0]:
        raise InputError(f"source {spec!r}: use {SOURCE_FORMS[kind]}")
    path = Path(parts[0]).expanduser()
    if kind == "tsv":
        return read_tsv(path, Path(parts[1]).expanduser() if len(parts) > 1 else None)
    if kind == "ffpp":
        split = parts[1] if len(parts) > 1 and parts[1] else DEFAULT_SPLIT[kind]
        compression = parts[2] if len(parts) > 2 else "c23"
        if split not in ("train", "val", "test") or compression not in ("raw", "c23", "c40"):
            raise InputError(f"source {spec!r}: use {SOURCE_FORMS[kind]}")
        return read_ffpp(path, split, compression)  # type: ignore[arg-type]
    if kind == "celebdf":
        celeb_split = parts[1] if len(parts) > 1 and parts[1] else DEFAULT_SPLIT[kind]
        if celeb_split not in ("train", "test"):
            raise InputError(f"source {spec!r}: use {SOURCE_FORMS[kind]}")
        return read_celebdf(path, celeb_split)  # type: ignore[arg-type]
    if kind == "dfdc":
        return read_dfdc(path)
    return read_real(path)
