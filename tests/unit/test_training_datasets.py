"""Unit tests for the dataset readers (monitor.training.datasets) on small generated layouts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from monitor.errors import InputError
from monitor.training.datasets import (
    FFPP_METHODS,
    ClipRecord,
    identity_group,
    read_celebdf,
    read_dfdc,
    read_ffpp,
    read_source,
    read_tsv,
    refuse_duplicate_clips,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_tsv_reads_labels_groups_methods_and_pairs(tmp_path: Path) -> None:
    (tmp_path / "m.tsv").write_text(
        "path\tlabel\tmethod\textra\n"
        "dfl_swap_cropped/Kim_Jarrey_0_swap.mp4\tfake\tDFL\tx\n"
        "dfl_orig_cropped/Kim_Jarrey_0_orig.mp4\treal\treal\tx\n"
        "pair/fake.mp4\tfake\tswap\tx\n"
        "pair/real.mp4\treal\t\tx\n"
        "replay/fake.mp4\tattack\treplay\tx\n"
        "replay/real.mov\treal\t\tx\n"
        "#replay/old.mov\treal\t\tx\n"  # a comment line, not a clip
        "# reviewed 2026-11-27\n"
    )
    recs = read_tsv(tmp_path / "m.tsv", tmp_path / "root")
    by = {r.rel: r for r in recs}
    swap = by["dfl_swap_cropped/Kim_Jarrey_0_swap.mp4"]
    orig = by["dfl_orig_cropped/Kim_Jarrey_0_orig.mp4"]
    assert swap.group == orig.group == "dfl:Kim_Jarrey"  # a swap and its original never split
    assert swap.pair == tmp_path / "root" / "dfl_orig_cropped/Kim_Jarrey_0_orig.mp4"
    assert swap.method == "DFL" and swap.is_fake and not orig.is_fake
    assert by["pair/fake.mp4"].pair == tmp_path / "root" / "pair/real.mp4"
    assert by["replay/fake.mp4"].label == "attack" and by["replay/fake.mp4"].is_fake
    assert by["replay/fake.mp4"].pair == tmp_path / "root" / "replay/real.mov"
    assert by["pair/real.mp4"].pair is None
    assert len(recs) == 6


def test_tsv_rejects_unknown_labels_and_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "bad.tsv").write_text("path\tlabel\na.mp4\tmaybe\n")
    with pytest.raises(ValueError, match="maybe"):
        read_tsv(tmp_path / "bad.tsv")
    (tmp_path / "nolabel.tsv").write_text("path\tkind\na.mp4\treal\n")
    with pytest.raises(ValueError, match="label"):
        read_tsv(tmp_path / "nolabel.tsv")


@pytest.mark.parametrize(
    ("rel", "group"),
    [
        ("a/b.mp4", "a"),
        ("x_swap_cropped/Ava_de_Addario_3_swap.mp4", "x:Ava_de_Addario"),
        ("x_orig_cropped/Ava_de_Addario_3_orig.mp4", "x:Ava_de_Addario"),
        ("clip.mp4", "clip.mp4"),
    ],
)
def test_identity_group(rel: str, group: str) -> None:
    assert identity_group(rel) == group


def test_ffpp_official_split_layout(tmp_path: Path) -> None:
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test.json").write_text(json.dumps([["001", "002"]]))
    (tmp_path / "splits" / "train.json").write_text(json.dumps([["003", "004"]]))
    for vid in ("001", "002", "003", "004"):
        touch(tmp_path / "original_sequences/youtube/c23/videos" / f"{vid}.mp4")
    for m in ("Deepfakes", "NeuralTextures"):
        touch(tmp_path / "manipulated_sequences" / m / "c23/videos/001_002.mp4")
        touch(tmp_path / "manipulated_sequences" / m / "c23/videos/002_001.mp4")
        touch(tmp_path / "manipulated_sequences" / m / "c23/videos/003_004.mp4")
    recs = read_ffpp(tmp_path, "test")
    reals = [r for r in recs if r.label == "real"]
    fakes = [r for r in recs if r.label == "fake"]
    assert sorted(r.path.name for r in reals) == ["001.mp4", "002.mp4"]
    assert len(fakes) == 4 and {r.method for r in fakes} == {"Deepfakes", "NeuralTextures"}
    assert {r.group for r in recs} == {"ffpp:001"}  # a pair's videos share one group
    f = next(r for r in fakes if r.path.name == "002_001.mp4")
    assert f.pair is not None and f.pair.name == "002.mp4"
    assert all("003" not in r.path.name for r in recs)  # train ids stay out of the test split


def test_ffpp_sequences_of_one_youtube_video_share_a_group(tmp_path: Path) -> None:
    # FF++ cut YouTube video R03Sko97IDE into sequences 331 and 332 (the same person); its
    # official train split pairs them with different ids, so by pairs alone they were two groups.
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.json").write_text(json.dumps([["331", "260"], ["332", "051"], ["700", "701"]]))
    for vid in ("331", "260", "332", "051", "700", "701"):
        touch(tmp_path / "original_sequences/youtube/c23/videos" / f"{vid}.mp4")
    touch(tmp_path / "manipulated_sequences/Deepfakes/c23/videos/331_260.mp4")
    groups = lambda: {r.path.name: r.group for r in read_ffpp(tmp_path, "train")}  # noqa: E731
    assert groups()["331.mp4"] != groups()["332.mp4"]  # without the dictionary: by pairs only
    conversion = {"331": "R03Sko97IDE 0", "332": "R03Sko97IDE 1", "260": "a 0", "051": "b 0", "700": "c 0", "701": "d 0", "999": "R03Sko97IDE 2"}
    (tmp_path / "splits" / "conversion_dict.json").write_text("\ufeff" + json.dumps(conversion))
    got = groups()
    assert {got[n] for n in ("331.mp4", "260.mp4", "332.mp4", "051.mp4", "331_260.mp4")} == {"ffpp:051"}
    assert got["700.mp4"] == got["701.mp4"] == "ffpp:700"
    (tmp_path / "splits" / "conversion_dict.json").write_text(json.dumps(["331"]))
    with pytest.raises(InputError, match="conversion_dict.json: expected FF"):
        read_ffpp(tmp_path, "train")


def test_celebdf_test_list(tmp_path: Path) -> None:
    # As a Windows editor may save it: a byte-order mark and CRLF line ends.
    (tmp_path / "List_of_testing_videos.txt").write_bytes(
        b"\xef\xbb\xbf1 YouTube-real/00170.mp4\r\n1 Celeb-real/id0_0001.mp4\r\n0 Celeb-synthesis/id0_id16_0000.mp4\r\n\r\n"
    )
    recs = read_celebdf(tmp_path, "test")
    assert [r.label for r in recs] == ["real", "real", "fake"]
    assert recs[2].method == "Celeb-synthesis" and recs[2].group == "celebdf:id0"
    assert recs[0].path == tmp_path / "YouTube-real/00170.mp4"
    # The fake is id16's face in id0's video 0000: that video is its frame-aligned original.
    assert recs[2].pair == tmp_path / "Celeb-real/id0_0000.mp4" and recs[1].pair is None


def test_dfdc_metadata(tmp_path: Path) -> None:
    meta = {
        "aaa.mp4": {"label": "FAKE", "split": "train", "original": "bbb.mp4"},
        "bbb.mp4": {"label": "REAL", "split": "train"},
    }
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    touch(tmp_path / "aaa.mp4")
    touch(tmp_path / "bbb.mp4")
    recs = {r.rel: r for r in read_dfdc(tmp_path / "metadata.json")}
    assert recs["aaa.mp4"].label == "fake" and recs["bbb.mp4"].label == "real"
    assert recs["aaa.mp4"].group == recs["bbb.mp4"].group == "dfdc:bbb.mp4"
    assert recs["aaa.mp4"].pair == tmp_path / "bbb.mp4"


def test_read_source_specs(tmp_path: Path) -> None:
    touch(tmp_path / "reals/a/x.mp4")
    touch(tmp_path / "reals/b/y.MOV")
    touch(tmp_path / "reals/b/notes.txt")
    recs = read_source(f"real:{tmp_path / 'reals'}")
    assert [r.rel for r in recs] == ["a/x.mp4", "b/y.MOV"]
    assert all(r.label == "real" for r in recs)
    with pytest.raises(ValueError, match="unknown training source"):
        read_source("youtube:abc")


def test_tsv_as_spreadsheets_export_it(tmp_path: Path) -> None:
    """Byte-order mark, CRLF, header case and padding, blank lines: all read the same."""
    text = "\ufeffPath \t Label\tMethod\r\nclips/a.mp4\tFAKE \tSwap\r\n\r\nclips/b.mp4\treal\t\r\n"
    (tmp_path / "excel.tsv").write_bytes(text.encode("utf-8"))
    recs = read_tsv(tmp_path / "excel.tsv", tmp_path)
    assert [(r.rel, r.label, r.method) for r in recs] == [("clips/a.mp4", "fake", "Swap"), ("clips/b.mp4", "real", "")]
    from monitor.training.evaluate import read_manifest

    rows = read_manifest(tmp_path / "excel.tsv")
    assert [(r["path"], r["label"]) for r in rows] == [("clips/a.mp4", "FAKE"), ("clips/b.mp4", "real")]


def test_tsv_short_row_and_empty_path_are_reported_by_line(tmp_path: Path) -> None:
    from monitor.training.evaluate import read_manifest

    (tmp_path / "short.tsv").write_text("path\tlabel\na.mp4\treal\nb.mp4\n")
    with pytest.raises(ValueError, match=r"short.tsv:3: label ''"):
        read_manifest(tmp_path / "short.tsv")
    with pytest.raises(ValueError, match=r"short.tsv:3: label ''"):
        read_tsv(tmp_path / "short.tsv")
    (tmp_path / "nopath.tsv").write_text("path\tlabel\n\treal\n")
    with pytest.raises(ValueError, match=r"nopath.tsv:2: empty path"):
        read_manifest(tmp_path / "nopath.tsv")


def test_tsv_errors_name_the_real_line_after_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "gaps.tsv").write_text("\npath\tlabel\n\n\na.mp4\treal\nb.mp4\tfkae\n")
    with pytest.raises(ValueError, match=r"gaps.tsv:6: label 'fkae'"):
        read_tsv(tmp_path / "gaps.tsv")
    from monitor.training.evaluate import read_manifest

    with pytest.raises(ValueError, match=r"gaps.tsv:6: label 'fkae'"):
        read_manifest(tmp_path / "gaps.tsv")


def test_tsv_quotes_are_text_and_bad_files_are_input_errors(tmp_path: Path) -> None:
    from monitor.errors import InputError

    (tmp_path / "q.tsv").write_text('path\tlabel\tnote\na.mp4\treal\t"a stray quote\nb.mp4\tfake\tx\n')
    recs = read_tsv(tmp_path / "q.tsv", tmp_path)
    assert [r.rel for r in recs] == ["a.mp4", "b.mp4"]
    (tmp_path / "utf16.tsv").write_bytes("path\tlabel\na.mp4\treal\n".encode("utf-16"))
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_tsv(tmp_path / "utf16.tsv")
    with pytest.raises(InputError, match="No such file"):
        read_source(f"tsv:{tmp_path / 'missing.tsv'}")
    with pytest.raises(InputError, match="no_such_dir"):
        read_source(f"dfdc:{tmp_path / 'no_such_dir' / 'metadata.json'}")


def test_dataset_files_in_the_wrong_shape_are_input_errors_naming_the_file(tmp_path: Path) -> None:
    from monitor.errors import InputError

    (tmp_path / "List_of_testing_videos.txt").write_text("1 YouTube-real/00170.mp4\nCeleb-synthesis/id0_id1_0000.mp4\n")
    with pytest.raises(InputError, match=r"List_of_testing_videos.txt:2: expected '<1\|0> <relative path>'"):
        read_celebdf(tmp_path, "test")
    (tmp_path / "metadata.json").write_text(json.dumps(["a.mp4", "b.mp4"]))
    with pytest.raises(InputError, match=r"metadata.json: expected DFDC's"):
        read_dfdc(tmp_path / "metadata.json")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test.json").write_text(json.dumps({"test": ["001", "002"]}))
    with pytest.raises(InputError, match=r"test.json: expected a list of \[target, source\] id pairs"):
        read_ffpp(tmp_path, "test")


def test_cells_a_spreadsheet_quoted_whole_are_unquoted(tmp_path: Path) -> None:
    (tmp_path / "q.tsv").write_text('path\tlabel\tmethod\n"my clips/a b.mp4"\t"fake"\t"swap ""DFL"""\n')
    (rec,) = read_tsv(tmp_path / "q.tsv", tmp_path)
    assert (rec.rel, rec.label, rec.method) == ("my clips/a b.mp4", "fake", 'swap "DFL"')


def test_manifest_paths_are_normalised_under_the_root(tmp_path: Path) -> None:
    from monitor.training.evaluate import read_manifest

    (tmp_path / "m.tsv").write_text("path\tlabel\n./fake/a.mp4\tfake\nreal\\\\b.mp4\treal\nreal//c.mp4\treal\n")
    assert [r["path"] for r in read_manifest(tmp_path / "m.tsv")] == ["fake/a.mp4", "real/b.mp4", "real/c.mp4"]
    recs = read_tsv(tmp_path / "m.tsv")
    assert [(r.rel, r.path) for r in recs][0] == ("fake/a.mp4", tmp_path / "fake/a.mp4")
    (tmp_path / "long.tsv").write_text("path\tlabel\na.mp4\treal\nmy\tclip.mp4\tfake\n")  # a raw tab in a path
    with pytest.raises(ValueError, match=r"long.tsv:3: 3 cells, but the header names 2 columns"):
        read_manifest(tmp_path / "long.tsv")
    for bad, message in (("/data/x.mp4", "is absolute"), ("../x.mp4", r"leaves the root \(\.\.\)"), ("C:\\\\v\\\\x.mp4", "is absolute")):
        (tmp_path / "bad.tsv").write_text(f"path\tlabel\na.mp4\treal\n{bad}\tfake\n")
        with pytest.raises(ValueError, match=rf"bad.tsv:3: path .* {message}"):
            read_manifest(tmp_path / "bad.tsv")


def test_dfdc_labels_other_than_real_or_fake_are_errors(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text(json.dumps({"c.mp4": {"lable": "FAKE"}}))
    with pytest.raises(ValueError, match=r"c.mp4: label None is not REAL or FAKE"):
        read_dfdc(tmp_path / "metadata.json")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"/abs/y.mp4": {"label": "REAL"}}, "is absolute"),
        ({"x.mp4": {"label": "FAKE", "original": "../../../etc/x.mp4"}}, r"original: path .* leaves the root"),
    ],
)
def test_dfdc_names_stay_in_the_part_folder(tmp_path: Path, entry: dict, message: str) -> None:
    (tmp_path / "metadata.json").write_text(json.dumps(entry))
    with pytest.raises(ValueError, match=message):
        read_dfdc(tmp_path / "metadata.json")


def test_ffpp_compression_option_and_an_empty_layout(tmp_path: Path) -> None:
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.json").write_text(json.dumps([["001", "002"]]))
    with pytest.raises(ValueError, match=r"no FF\+\+ video of the train split at c23"):
        read_source(f"ffpp:{tmp_path}")
    touch(tmp_path / "original_sequences/youtube/c40/videos/001.mp4")
    touch(tmp_path / "manipulated_sequences/Deepfakes/c40/videos/001_002.mp4")
    recs = read_source(f"ffpp:{tmp_path}:train:c40")
    assert sorted(r.rel for r in recs) == ["manipulated_sequences/Deepfakes/c40/videos/001_002.mp4", "original_sequences/youtube/c40/videos/001.mp4"]
    with pytest.raises(ValueError, match=r"use ffpp:ROOT\[:train\|val\|test\[:raw\|c23\|c40\]\]"):
        read_source(f"ffpp:{tmp_path}:train:c99")


def test_real_sources_group_by_top_level_folder_and_refuse_nothing_to_read(tmp_path: Path) -> None:
    touch(tmp_path / "reals/alice/s1/a.mp4")
    touch(tmp_path / "reals/bob/s1/b.mp4")
    touch(tmp_path / "reals/loose.webm")
    recs = read_source(f"real:{tmp_path / 'reals'}")
    # Same leaf names (s1) no longer merge two people; a loose clip is a group of its own.
    assert {r.rel: r.group for r in recs} == {"alice/s1/a.mp4": "real:alice", "bob/s1/b.mp4": "real:bob", "loose.webm": "real:loose.webm"}
    with pytest.raises(ValueError, match="no such folder"):
        read_source(f"real:{tmp_path / 'typo'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        read_source(f"real:{tmp_path / 'empty'}")


def test_holdout_names_must_be_groups_of_the_sources(tmp_path: Path) -> None:
    from monitor.training.train import apply_holdout

    touch(tmp_path / "reals/alice/a.mp4")
    touch(tmp_path / "reals/bob/b.mp4")
    recs = read_source(f"real:{tmp_path / 'reals'}")
    assert [r.group for r in apply_holdout(recs, ["real:bob"])] == ["real:alice"]
    with pytest.raises(ValueError, match=r"--holdout real:bbo: no such group .*real:alice, real:bob"):
        apply_holdout(recs, ["real:bbo"])


def test_folder_links_are_followed_once_in_real_and_celebdf(tmp_path: Path) -> None:
    touch(tmp_path / "elsewhere/bob/b1.mp4")
    touch(tmp_path / "reals/alice/a1.mp4")
    (tmp_path / "reals/bob").symlink_to(tmp_path / "elsewhere/bob")
    (tmp_path / "reals/bob2").symlink_to(tmp_path / "elsewhere/bob")  # a second link to a folder already read
    (tmp_path / "reals/alice/loop").symlink_to(tmp_path / "reals")  # a link loop ends
    recs = read_source(f"real:{tmp_path / 'reals'}")
    assert [(r.rel, r.group) for r in recs] == [("alice/a1.mp4", "real:alice"), ("bob/b1.mp4", "real:bob")]
    # Every person folder a link: the folder read_real is documented to want, built with ln -s.
    (tmp_path / "links").mkdir()
    (tmp_path / "links/bob").symlink_to(tmp_path / "elsewhere/bob")
    assert [r.rel for r in read_source(f"real:{tmp_path / 'links'}")] == ["bob/b1.mp4"]
    (tmp_path / "cdf/List_of_testing_videos.txt").parent.mkdir()
    (tmp_path / "cdf/List_of_testing_videos.txt").write_text("1 Celeb-real/id0_0000.mp4\n")
    touch(tmp_path / "cdf/Celeb-real/id0_0000.mp4")
    touch(tmp_path / "more/id1_id0_0002.mp4")
    (tmp_path / "cdf/Celeb-synthesis").mkdir()
    (tmp_path / "cdf/Celeb-synthesis/batch2").symlink_to(tmp_path / "more")
    assert [r.rel for r in read_celebdf(tmp_path / "cdf", "train")] == ["Celeb-synthesis/batch2/id1_id0_0002.mp4"]


def test_hidden_files_and_folders_are_not_clips(tmp_path: Path) -> None:
    touch(tmp_path / "reals/alice/a1.mp4")
    touch(tmp_path / "reals/alice/._a1.mp4")  # macOS AppleDouble on exFAT: not a video
    touch(tmp_path / "reals/.Trash-1000/files/x.mp4")
    touch(tmp_path / "reals/._stray.mp4")
    assert [r.rel for r in read_source(f"real:{tmp_path / 'reals'}")] == ["alice/a1.mp4"]
    (tmp_path / "cdf").mkdir()
    (tmp_path / "cdf/List_of_testing_videos.txt").write_text("1 Celeb-real/id0_0001.mp4\n")
    touch(tmp_path / "cdf/Celeb-real/id0_0001.mp4")
    touch(tmp_path / "cdf/Celeb-real/id0_0000.mp4")
    touch(tmp_path / "cdf/Celeb-real/._id0_0000.mp4")
    touch(tmp_path / "cdf/Celeb-synthesis/.cache/id0_id1_0000.mp4")
    assert [r.rel for r in read_celebdf(tmp_path / "cdf", "train")] == ["Celeb-real/id0_0000.mp4"]


def test_split_json_and_dfdc_metadata_with_a_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits/train.json").write_bytes(b'\xef\xbb\xbf[["000","003"]]\r\n')  # as Windows Notepad saves it
    touch(tmp_path / "original_sequences/youtube/c23/videos/000.mp4")
    assert [r.rel for r in read_source(f"ffpp:{tmp_path}")] == ["original_sequences/youtube/c23/videos/000.mp4"]
    (tmp_path / "part").mkdir()
    (tmp_path / "part/metadata.json").write_bytes(b'\xef\xbb\xbf{"a.mp4": {"label": "REAL"}}')
    touch(tmp_path / "part/a.mp4")
    assert [r.rel for r in read_source(f"dfdc:{tmp_path / 'part/metadata.json'}")] == ["a.mp4"]


def test_ffpp_deepfakedetection_is_not_read_and_a_warning_counts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits/test.json").write_text(json.dumps([["001", "002"]]))
    for vid in ("001", "002"):
        touch(tmp_path / "original_sequences/youtube/c23/videos" / f"{vid}.mp4")
    touch(tmp_path / "manipulated_sequences/Deepfakes/c23/videos/001_002.mp4")
    touch(tmp_path / "manipulated_sequences/Deepfakes/c23/videos/002_001.mp4")
    touch(tmp_path / "original_sequences/actors/c23/videos/01__exit_phone_room.mp4")
    touch(tmp_path / "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__exit_phone_room__YVGY8LOK.mp4")
    touch(tmp_path / "manipulated_sequences/DeepFakeDetection/c23/videos/02_01__exit_phone_room__ABCDEFGH.mp4")
    assert "DeepFakeDetection" not in FFPP_METHODS
    with caplog.at_level(logging.WARNING, logger="monitor.training.datasets"):
        recs = read_ffpp(tmp_path, "test")
    assert len(recs) == 4 and not any("DeepFakeDetection" in r.rel or "actors" in r.rel for r in recs)
    warnings = [r.getMessage() for r in caplog.records]
    # One warning, not a "missing videos" count: DFD's names never match the split pairs.
    assert len(warnings) == 1, warnings
    assert "DeepFakeDetection" in warnings[0] and "original_sequences/actors" in warnings[0]
    assert "no official split" in warnings[0] and "3 videos at c23" in warnings[0]


def dfdc_part(folder: Path, meta: dict, on_disk: list[str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps(meta))
    for name in on_disk:
        touch(folder / name)
    return folder


def test_dfdc_reads_a_part_folder_a_folder_of_parts_and_the_test_labels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pair = {"f.mp4": {"label": "FAKE", "original": "r.mp4"}, "r.mp4": {"label": "REAL", "original": None}}
    dfdc_part(tmp_path / "dfdc/dfdc_train_part_0", {**pair, "gone.mp4": {"label": "REAL"}}, ["f.mp4", "r.mp4"])
    # The same names in another part: their groups must not merge with part 0's.
    dfdc_part(tmp_path / "dfdc/dfdc_train_part_1", pair, ["f.mp4", "r.mp4"])
    with caplog.at_level(logging.WARNING, logger="monitor.training.datasets"):
        part = read_source(f"dfdc:{tmp_path / 'dfdc/dfdc_train_part_0'}")
    assert [(r.rel, r.group) for r in part] == [("f.mp4", "dfdc:r.mp4"), ("r.mp4", "dfdc:r.mp4")]
    # A listed video that is not on disk is left out, with one warning that counts it.
    assert [r.getMessage() for r in caplog.records] == [
        f"dfdc:{tmp_path / 'dfdc/dfdc_train_part_0'}: 1 of its 3 listed videos are not there (read 2)"
    ]
    both = read_source(f"dfdc:{tmp_path / 'dfdc'}")
    assert [(r.rel, r.label, r.group) for r in both] == [
        ("dfdc_train_part_0/f.mp4", "fake", "dfdc:dfdc_train_part_0/r.mp4"),
        ("dfdc_train_part_0/r.mp4", "real", "dfdc:dfdc_train_part_0/r.mp4"),
        ("dfdc_train_part_1/f.mp4", "fake", "dfdc:dfdc_train_part_1/r.mp4"),
        ("dfdc_train_part_1/r.mp4", "real", "dfdc:dfdc_train_part_1/r.mp4"),
    ]
    assert both[2].path == tmp_path / "dfdc/dfdc_train_part_1/f.mp4"
    assert both[2].pair == tmp_path / "dfdc/dfdc_train_part_1/r.mp4"
    (tmp_path / "test").mkdir()
    csv_text = b"\xef\xbb\xbffilename,label\r\naalscayrfi.mp4,1\r\naaqaifqrwn.mp4,0\r\nabsent.mp4,1\r\n"
    (tmp_path / "test/labels.csv").write_bytes(csv_text)  # BOM and CRLF; absent.mp4 not on disk
    touch(tmp_path / "test/aalscayrfi.mp4")
    touch(tmp_path / "test/aaqaifqrwn.mp4")
    test = read_source(f"dfdc:{tmp_path / 'test/labels.csv'}")
    assert [(r.rel, r.label, r.group, r.pair) for r in test] == [
        ("aalscayrfi.mp4", "fake", "dfdc:aalscayrfi.mp4", None),
        ("aaqaifqrwn.mp4", "real", "dfdc:aaqaifqrwn.mp4", None),
    ]
    assert test[0].path == tmp_path / "test/aalscayrfi.mp4"


def test_dfdc_files_it_cannot_read_say_what_is_expected(tmp_path: Path) -> None:
    expected = (
        r"expected a DFDC metadata.json \({file: {label, original}}\), a folder of them, "
        r"or the test set's labels.csv \(filename,label\)"
    )
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not json\n")
    (tmp_path / "other.csv").write_text("video,fake\na.mp4,1\n")
    for path in (tmp_path / "empty", tmp_path / "notes.txt", tmp_path / "other.csv"):
        with pytest.raises(InputError, match=rf"{path.name}.*{expected}"):
            read_source(f"dfdc:{path}")
    (tmp_path / "labels.csv").write_text("filename,label\na.mp4,FAKE\n")
    with pytest.raises(InputError, match=r"labels.csv:2: label 'FAKE' is not 1 \(fake\) or 0 \(real\)"):
        read_source(f"dfdc:{tmp_path / 'labels.csv'}")
    # A field over the csv module's limit was a traceback (exit 1), not an error naming the file.
    (tmp_path / "labels.csv").write_text("filename,label\n" + "a" * 200_000 + ".mp4,1\n")
    with pytest.raises(InputError, match=r"labels.csv: not a CSV file \(field larger than field limit"):
        read_source(f"dfdc:{tmp_path / 'labels.csv'}")
    dfdc_part(tmp_path / "p", {"a.mp4": {"label": "REAL"}}, [])
    with pytest.raises(InputError, match=r"none of its 1 listed videos is there"):
        read_source(f"dfdc:{tmp_path / 'p'}")


@pytest.mark.parametrize(
    ("spec", "form"),
    [
        ("ffpp:{d}:test:c23:oops", r"ffpp:ROOT\[:train\|val\|test\[:raw\|c23\|c40\]\]"),
        ("real:{d}:typo", "real:DIR"),
        ("dfdc:{d}/metadata.json:x", "dfdc:PATH"),
        ("celebdf:{d}:train:x", r"celebdf:ROOT\[:train\|test\]"),
        ("tsv:{d}/m.tsv:{d}:x", r"tsv:MANIFEST\[:ROOT\]"),
    ],
)
def test_source_specs_refuse_extra_fields(tmp_path: Path, spec: str, form: str) -> None:
    with pytest.raises(InputError, match=rf"source '.*': use {form}"):
        read_source(spec.format(d=tmp_path))


def test_source_spec_paths_expand_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    touch(tmp_path / "reals/alice/a.mp4")
    assert [r.path for r in read_source("real:~/reals")] == [tmp_path / "reals/alice/a.mp4"]
    (tmp_path / "m.tsv").write_text("path\tlabel\na.mp4\treal\n")
    assert [r.path for r in read_source("tsv:~/m.tsv:~/reals")] == [tmp_path / "reals/a.mp4"]
    dfdc_part(tmp_path / "part", {"a.mp4": {"label": "REAL"}}, ["a.mp4"])
    assert [r.path for r in read_source("dfdc:~/part")] == [tmp_path / "part/a.mp4"]
    (tmp_path / "ff/splits").mkdir(parents=True)
    (tmp_path / "ff/splits/val.json").write_text(json.dumps([["001", "002"]]))
    touch(tmp_path / "ff/original_sequences/youtube/c40/videos/001.mp4")
    assert [r.path.name for r in read_source("ffpp:~/ff:val:c40")] == ["001.mp4"]


def test_the_same_file_in_two_sources_is_refused(tmp_path: Path) -> None:
    touch(tmp_path / "ff/splits/test.json").write_text(json.dumps([["000", "003"]]))
    touch(tmp_path / "ff/original_sequences/youtube/c23/videos/000.mp4")
    ffpp = read_source(f"ffpp:{tmp_path / 'ff'}:test")
    real = read_source(f"real:{tmp_path / 'ff/original_sequences/youtube/c23/videos'}")
    refuse_duplicate_clips(ffpp)  # one source alone is fine
    both = r"000.mp4: the same video is in two sources, .*\(group ffpp:000\) and 000.mp4 \(group real:000.mp4\)"
    with pytest.raises(InputError, match=both):
        refuse_duplicate_clips(ffpp + real)
    # By resolved path: a link, or a path spelled another way, is the same file.
    (tmp_path / "alias").symlink_to(tmp_path / "ff")
    alias = ClipRecord(tmp_path / "alias/original_sequences/youtube/./c23/videos/000.mp4", "real", "x", rel="x.mp4")
    with pytest.raises(InputError, match="group x"):
        refuse_duplicate_clips([*ffpp, alias])
    # Distinct files, even hard links of one another (as many test fixtures are), pass.
    (tmp_path / "hard.mp4").hardlink_to(tmp_path / "ff/original_sequences/youtube/c23/videos/000.mp4")
    refuse_duplicate_clips([*ffpp, ClipRecord(tmp_path / "hard.mp4", "real", "h")])
    # read_source leaves the check to whoever concatenates sources: one folder may link a file twice.
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked/again.mp4").symlink_to(tmp_path / "hard.mp4")
    (tmp_path / "linked/hard.mp4").symlink_to(tmp_path / "hard.mp4")
    assert len(read_source(f"real:{tmp_path / 'linked'}")) == 2


def test_manifest_rows_that_are_not_what_they_seem(tmp_path: Path) -> None:
    # A column named twice kept its last value, and a line over the csv module's limit (a DFDC
    # metadata.json given as a manifest) crashed with a traceback.
    m = tmp_path / "m.tsv"
    m.write_text("path\tlabel\tpath\na.mp4\treal\tb.mp4\n")
    with pytest.raises(InputError, match="column 'path' named twice"):
        read_tsv(m, tmp_path)
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps({f"v{i:05d}.mp4": {"label": "FAKE", "original": "x.mp4"} for i in range(5000)}))
    with pytest.raises(InputError, match=r"not a tab-separated manifest .*--source dfdc:"):
        read_tsv(meta, tmp_path)


def test_a_missing_ffpp_split_file_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"splits/test\.json: no such file.*FaceForensics repository"):
        read_source(f"ffpp:{tmp_path}:test")
