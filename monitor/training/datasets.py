"""Dataset readers (TSV manifest, FaceForensics++, Celeb-DF v2, DFDC) into one typed clip record."""

from __future__ import annotations

import csv
import json
import logging
import re
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
                    continue  # blank, or a comment line (after the header)
                if not header:
                    header = [h.lower() for h in cells]
                    continue
                # A short row reads as empty cells, so it fails on its label.
                rows.append((reader.line_num, dict(zip(header, cells + [""] * (len(header) - len(cells))))))
    except UnicodeDecodeError as exc:
        raise InputError(f"{manifest}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise InputError(f"{manifest}: {exc.strerror or exc}") from exc
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


FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection")


def read_ffpp(root: Path, split: Literal["train", "val", "test"] = "test", compression: str = "c23") -> list[ClipRecord]:
    """FaceForensics++ folder layout with the official splits (``splits/{train,val,test}.json``,
    lists of [target, source] id pairs): originals from ``original_sequences/youtube/<c>/videos``,
    fakes ``<target>_<source>.mp4`` from ``manipulated_sequences/<method>/<c>/videos``."""
    split_file = root / "splits" / f"{split}.json"
    pairs = json.loads(split_file.read_text())
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(i, str) for i in p) for p in pairs):
        raise InputError(f"{split_file}: expected a list of [target, source] id pairs, as FF++'s official splits are")
    ids = sorted({i for p in pairs for i in p})
    # Both videos of a pair (and every fake made from them) share one group.
    group_of = {i: f"ffpp:{min(a, b)}" for a, b in pairs for i in (a, b)}
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
                elif method != "DeepFakeDetection":  # DFD's videos are not named by split pairs
                    missing += 1
    if not out:
        raise InputError(
            f"{root}: no FF++ video of the {split} split at {compression}: expected "
            f"original_sequences/youtube/{compression}/videos/<id>.mp4 and "
            f"manipulated_sequences/<method>/{compression}/videos/<target>_<source>.mp4"
        )
    if missing:
        logger.warning("%s: %d videos of the %s split are not there at %s (read %d)", root, missing, split, compression, len(out))
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
        for p in sorted((root / folder).rglob("*")):
            if p.suffix.lower() not in VIDEO_SUFFIXES or not p.is_file():
                continue
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


def read_dfdc(metadata: Path) -> list[ClipRecord]:
    """A DFDC part folder's ``metadata.json`` ({file: {label: REAL|FAKE, original}}); a fake
    is grouped with its original so both fall on one side of a split."""
    data = json.loads(metadata.read_text())
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
        group = "dfdc:" + (original or name)
        out.append(
            ClipRecord(root / name, label, group, "DFDC", pair=root / original if original else None, rel=name)
        )
    return out


VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".avi", ".mkv", ".ts", ".m4v", ".mpg"}


def read_real(root: Path) -> list[ClipRecord]:
    """Every video under ``root``, all genuine (self-blending makes the fakes). Each top-level
    folder is one group (one person or source: keep a person's clips in one folder), and each
    video directly under ``root`` its own group, so that cross-fitting can split them."""
    if not root.is_dir():
        raise InputError(f"real:{root}: no such folder")
    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in VIDEO_SUFFIXES or not p.is_file():
            continue
        rel = p.relative_to(root)
        group = f"real:{rel.parts[0]}" if len(rel.parts) > 1 else f"real:{rel.as_posix()}"
        out.append(ClipRecord(p, "real", group, "genuine", rel=rel.as_posix()))
    if not out:
        raise InputError(f"real:{root}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) under it")
    return out


def read_source(spec: str) -> list[ClipRecord]:
    """One training source from a spec ``kind:path[:option]``:
    ``tsv:MANIFEST[:ROOT]``, ``ffpp:ROOT[:split[:compression]]`` (train, val or test; raw, c23
    or c40; default train at c23), ``celebdf:ROOT[:split]`` (train: every video not on the
    official test list, the default; or test: the list), ``dfdc:METADATA.json``,
    ``real:DIR`` (every video under DIR, all genuine: self-blending alone). A missing or
    unreadable file is an InputError that names the source."""
    try:
        return _read_source(spec)
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"source {spec!r}: {exc}") from exc


def _read_source(spec: str) -> list[ClipRecord]:
    kind, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    if kind == "tsv" and parts:
        return read_tsv(Path(parts[0]), Path(parts[1]) if len(parts) > 1 else None)
    if kind == "ffpp" and parts:
        split = parts[1] if len(parts) > 1 and parts[1] else "train"
        compression = parts[2] if len(parts) > 2 else "c23"
        if split not in ("train", "val", "test") or compression not in ("raw", "c23", "c40"):
            raise InputError(f"source {spec!r}: use ffpp:ROOT[:train|val|test[:raw|c23|c40]]")
        return read_ffpp(Path(parts[0]), split, compression)  # type: ignore[arg-type]
    if kind == "celebdf" and parts:
        celeb_split = parts[1] if len(parts) > 1 and parts[1] else "train"
        if celeb_split not in ("train", "test") or len(parts) > 2:
            raise InputError(f"source {spec!r}: use celebdf:ROOT[:train|test]")
        return read_celebdf(Path(parts[0]), celeb_split)  # type: ignore[arg-type]
    if kind == "dfdc" and parts:
        return read_dfdc(Path(parts[0]))
    if kind == "real" and parts:
        return read_real(Path(parts[0]))
    raise InputError(f"unknown training source {spec!r}: use tsv:, ffpp:, celebdf:, dfdc: or real:")
