"""Annotation readers on the committed official lists (exact counts) and on crafted lists."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import benchmark.config  # noqa: F401  (registers the ${project_root:} resolver)
from benchmark import CONF_DIR, DATASETS_DIR
from benchmark.data.annotations import (
    AnnotationFormatError,
    load_annotations,
    read_hmdb51,
    read_kinetics,
    read_ucf101,
)
from benchmark.data.records import VideoRecord

UCF_DIR = DATASETS_DIR / "ucf101" / "ucfTrainTestlist"
HMDB_DIR = DATASETS_DIR / "hmdb51" / "testTrainMulti_7030_splits"
K400_DIR = DATASETS_DIR / "kinetics400"


def dataset_cfg(option: str, data_root: Path | str = "/nonexistent-data-root") -> dict:
    """conf/dataset/<option>.yaml resolved the way Hydra resolves it (data_root at top level)."""
    cfg = OmegaConf.create(
        {"data_root": str(data_root), "dataset": OmegaConf.load(CONF_DIR / "dataset" / f"{option}.yaml")}
    )
    return OmegaConf.to_container(cfg, resolve=True)["dataset"]


# ---------------------------------------------------------------- provenance of the copies


@pytest.mark.parametrize("name", ["ucf101", "hmdb51", "kinetics400"])
def test_sources_md_lists_every_copied_file_with_its_sha256(name):
    folder = DATASETS_DIR / name
    rows = re.findall(r"^\| (\S+) \| .*\| ([0-9a-f]{64}) \|", (folder / "SOURCES.md").read_text(), re.M)
    listed = {path: sha for path, sha in rows}
    on_disk = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != "SOURCES.md" and "splits" not in p.relative_to(folder).parts
    }
    assert set(listed) == on_disk
    for path, sha in listed.items():
        assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == sha, path
    assert len(listed) == {"ucf101": 7, "hmdb51": 153, "kinetics400": 7}[name]


def test_gitattributes_keeps_crlf_of_dataset_files():
    text = (DATASETS_DIR.parent / ".gitattributes").read_text()
    assert re.search(r"^datasets/\*\* -text$", text, re.M)


# ---------------------------------------------------------------- UCF101


def test_ucf101_official_counts_and_labels():
    split1 = read_ucf101(UCF_DIR, 1)
    assert (len(split1.train), len(split1.test), len(split1.classes)) == (9537, 3783, 101)
    assert split1.classes[0] == "ApplyEyeMakeup" and split1.classes[36] == "HandstandPushups"
    assert split1.train[0].path == "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"
    assert (split1.train[0].label, split1.train[0].class_name) == (0, "ApplyEyeMakeup")
    # testlists carry no label: it comes from the class folder (classInd id - 1)
    quirk = [r for r in split1.test if r.path.startswith("HandstandPushups/")]
    assert quirk[0].path == "HandstandPushups/v_HandStandPushups_g01_c01.avi"  # kept as listed
    assert {r.label for r in quirk} == {36}
    assert split1.source_sha256 == {
        "classInd.txt": "d7abbb76074d04e80c62ad8a61529bb8eec32ef978569601b2890edec3af0359",
        "trainlist01.txt": "f7a4d7abc05147b921c17fc227d731197c3583f29945d1f1d46bce830d1b9f12",
        "testlist01.txt": "81be4765084d72739dca4d11658f7ec369c441ad9e227f11d9468fe2a1c14890",
    }
    sizes = {}
    for k in (1, 2, 3):
        split = read_ucf101(UCF_DIR, k)
        paths = {r.path for r in split.train} | {r.path for r in split.test}
        assert len(paths) == 13320 and len(split.train) + len(split.test) == 13320
        assert {r.label for r in split.train} == set(range(101))
        sizes[k] = (len(split.train), len(split.test))
    assert sizes == {1: (9537, 3783), 2: (9586, 3734), 3: (9624, 3696)}


def test_ucf101_crlf_is_stripped_and_equals_lf_version(tmp_path):
    raw = (UCF_DIR / "trainlist01.txt").read_bytes()
    assert raw.count(b"\r\n") == 9537  # the committed copy keeps CRLF
    crlf = read_ucf101(UCF_DIR, 1)
    assert not any("\r" in r.path or "\r" in r.class_name for r in crlf.train + crlf.test)
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        (tmp_path / name).write_bytes((UCF_DIR / name).read_bytes().replace(b"\r\n", b"\n"))
    lf = read_ucf101(tmp_path, 1)
    assert (lf.train, lf.test, lf.classes) == (crlf.train, crlf.test, crlf.classes)


def write_ucf(folder: Path, train: list[str], test: list[str], classes=("Archery", "Basketball")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classInd.txt").write_bytes(b"".join(f"{i} {c}\r\n".encode() for i, c in enumerate(classes, 1)))
    (folder / "trainlist01.txt").write_bytes("".join(f"{line}\r\n" for line in train).encode())
    (folder / "testlist01.txt").write_bytes("".join(f"{line}\r\n" for line in test).encode())
    return folder


def test_ucf101_split_1_only_set_reads_and_split_2_names_missing_file(tmp_path):
    folder = write_ucf(
        tmp_path / "ucfTrainTestlist", ["Archery/v_Archery_g01_c01.avi 1"], ["Basketball/v_Basketball_g02_c01.avi"]
    )
    split = read_ucf101(folder, 1)
    assert [(r.path, r.label) for r in split.train + split.test] == [
        ("Archery/v_Archery_g01_c01.avi", 0),
        ("Basketball/v_Basketball_g02_c01.avi", 1),
    ]
    with pytest.raises(FileNotFoundError, match=r"trainlist02\.txt"):
        read_ucf101(folder, 2)
    with pytest.raises(ValueError, match="split must be a positive integer"):
        read_ucf101(folder, "one")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("Archery/v_Archery_g01_c01.avi 1 extra", "expected '<Class>/<video>.avi'"),
        ("Archery/v_Archery_g01_c01.avi 2", "contradicts folder 'Archery'"),
        ("Bowling/v_Bowling_g01_c01.avi 1", "class folder 'Bowling' is not in classInd.txt"),
        ("v_Archery_g01_c01.avi 1", "expected a path of the form"),
        ("../Archery/v_Archery_g01_c01.avi 1", "contains '..'"),
        ("/data/Archery/v_Archery_g01_c01.avi 1", "is absolute"),
    ],
)
def test_ucf101_malformed_line_names_file_line_and_text(tmp_path, line, expected):
    folder = write_ucf(tmp_path, ["Archery/v_Archery_g01_c02.avi 1", line], ["Basketball/v_Basketball_g02_c01.avi"])
    with pytest.raises(AnnotationFormatError, match=re.escape(expected)) as err:
        read_ucf101(folder, 1)
    message = str(err.value)
    assert f"{folder / 'trainlist01.txt'}:2:" in message and repr(line) in message


def test_ucf101_duplicate_and_train_test_overlap_are_errors(tmp_path):
    folder = write_ucf(tmp_path / "dup", ["Archery/a.avi 1", "Archery/a.avi 1"], ["Basketball/b.avi"])
    with pytest.raises(AnnotationFormatError, match="listed twice \\(first on line 1\\)"):
        read_ucf101(folder, 1)
    folder = write_ucf(tmp_path / "overlap", ["Archery/a.avi 1"], ["Archery/a.avi"])
    with pytest.raises(ValueError, match="in both"):
        read_ucf101(folder, 1)


# ---------------------------------------------------------------- HMDB51


def test_hmdb51_official_counts_trailing_spaces_and_labels():
    assert (HMDB_DIR / "brush_hair_test_split1.txt").read_bytes().splitlines()[0].endswith(b"1 ")
    for k in (1, 2, 3):
        split = read_hmdb51(HMDB_DIR, k)
        assert (len(split.train), len(split.test), len(split.classes)) == (3570, 1530, 51)
        assert len(split.source_sha256) == 51 and all(n.endswith(f"_test_split{k}.txt") for n in split.source_sha256)
    assert split.classes == sorted(split.classes) and split.classes[0] == "brush_hair"
    split1 = read_hmdb51(HMDB_DIR, 1)
    first = split1.train[0]
    assert first.path == "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi"
    assert (first.label, first.class_name) == (0, "brush_hair")
    wave = split1.classes.index("wave")
    assert all(r.label == wave for r in split1.test if r.path.startswith("wave/")) and wave == 50
    assert not any(r.path.endswith(" ") for r in split1.train + split1.test)


def test_hmdb51_split_1_only_and_malformed_lines(tmp_path):
    (tmp_path / "run_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    (tmp_path / "jump_test_split1.txt").write_text("d.avi 2 \n\n")
    split = read_hmdb51(tmp_path, 1)
    assert split.classes == ["jump", "run"]
    assert [(r.path, r.label) for r in split.train] == [("run/a.avi", 1)]
    assert [(r.path, r.label) for r in split.test] == [("jump/d.avi", 0), ("run/b.avi", 1)]
    with pytest.raises(FileNotFoundError, match=r"jump_test_split2\.txt"):
        read_hmdb51(tmp_path, 2)
    (tmp_path / "run_test_split1.txt").write_text("a.avi 1 \nb.avi 3 \n")
    with pytest.raises(AnnotationFormatError, match=r"run_test_split1\.txt:2: .*got 'b.avi 3 '"):
        read_hmdb51(tmp_path, 1)
    (tmp_path / "run_test_split1.txt").write_text("../../etc/passwd 1 \n")
    with pytest.raises(AnnotationFormatError, match=r"run_test_split1\.txt:1: .*contains '\.\.'"):
        read_hmdb51(tmp_path, 1)


# ---------------------------------------------------------------- Kinetics


@pytest.fixture(scope="module")
def kinetics_default():
    return load_annotations(dataset_cfg("kinetics400"))


def test_kinetics400_default_config_counts_and_label_mapping(kinetics_default):
    split = kinetics_default
    labels = (K400_DIR / "label_map.txt").read_text().splitlines()
    assert split.classes == labels and len(labels) == 400
    assert (len(split.train), len(split.test)) == (219664, 19906)
    assert {r.label for r in split.train} == set(range(400)) == {r.label for r in split.test}
    shower = [r for r in split.train if r.path == "train/taking_a_shower/Wf9RFoSFJWc_000009_000019.mp4"]
    assert shower and shower[0].class_name == "taking a shower" and shower[0].label == labels.index("taking a shower")
    # the list's first line carries FedVSSL classInd id 290 ('abseiling'): mapped by name to label 0
    with gzip.open(K400_DIR / "fedvssl_splits/train_union_from_iid.txt.gz", "rt") as f:
        assert f.readline() == "abseiling/-3B32lodo2M_000059_000069 290\n"
    assert split.train[0] == VideoRecord("train/abseiling/-3B32lodo2M_000059_000069.mp4", 0, "abseiling")
    # every record's class folder is its label-map name with '_' for ' '
    for record in split.train[::997] + split.test[::97]:
        assert record.path.split("/")[1] == split.classes[record.label].replace(" ", "_")
    assert split.test[0].path == "val/abseiling/0wR5jVB-WPk_000417_000427.mp4"
    assert split.dataset == "kinetics400"
    assert set(split.source_sha256) == {
        "label_map.txt",
        "fedvssl_splits/train_union_from_iid.txt.gz",
        "fedvssl_splits/classInd.txt",
        "2017_release/kinetics-400_val.csv",
    }
    assert split.source_sha256["fedvssl_splits/train_union_from_iid.txt.gz"] == (
        "1d1f07d39de6eb6b1db8cb372d2041dd3823fe6049ddd25f1d144b909cb9fd75"
    )


def test_kinetics_unlabelled_2017_test_is_rejected_and_2020_test_reads():
    with pytest.raises(ValueError, match=r"kinetics-400_test\.csv: no 'label' column.*2020 release test\.csv"):
        read_kinetics(
            K400_DIR / "label_map.txt",
            train=K400_DIR / "2020_release/validate.csv",
            test=K400_DIR / "2017_release/kinetics-400_test.csv",
        )
    split = read_kinetics(
        K400_DIR / "label_map.txt",
        train=K400_DIR / "2020_release/validate.csv",
        test=K400_DIR / "2020_release/test.csv",
        train_subdir="val",
        test_subdir="test",
    )
    assert (len(split.train), len(split.test), len(split.classes)) == (18035, 35357, 400)
    assert split.test[0].path == "test/drinking_beer/--6bJUbfpnQ_000017_000027.mp4"


def test_kinetics_reader_accepts_any_release_csv(tmp_path):
    # Kinetics-700-2020 style: no is_cc, columns in another order, quoted labels, labels
    # outside Kinetics-400, times written as floats.
    (tmp_path / "train.csv").write_text(
        "youtube_id,label,time_start,time_end,split\n"
        'aaaaaaaaaaa,"closing door",0,10,train\n'
        'bbbbbbbbbbb,"peeling banana",12.0,22.0,train\n'
        "ccccccccccc,adjusting glasses,5,15,train\n"
    )
    (tmp_path / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nclosing door,ddddddddddd,100,110,validate\n"
    )
    split = read_kinetics(
        None, train=tmp_path / "train.csv", test=tmp_path / "validate.csv", train_subdir="", test_subdir="val/"
    )
    assert split.classes == ["adjusting glasses", "closing door", "peeling banana"]
    assert [(r.path, r.label) for r in split.train] == [
        ("closing_door/aaaaaaaaaaa_000000_000010.mp4", 1),
        ("peeling_banana/bbbbbbbbbbb_000012_000022.mp4", 2),
        ("adjusting_glasses/ccccccccccc_000005_000015.mp4", 0),
    ]
    assert [(r.path, r.label) for r in split.test] == [("val/closing_door/ddddddddddd_000100_000110.mp4", 1)]
    with pytest.raises(ValueError, match="train_subdir: .*contains '..'"):
        read_kinetics(None, train=tmp_path / "train.csv", test=tmp_path / "validate.csv", train_subdir="../elsewhere")
    (tmp_path / "labels.txt").write_text("peeling banana\nclosing door\n")
    with pytest.raises(AnnotationFormatError, match=r"train\.csv:4: label 'adjusting glasses' is not in the label map"):
        read_kinetics(tmp_path / "labels.txt", train=tmp_path / "train.csv", test=tmp_path / "validate.csv")


@pytest.mark.parametrize(
    "row, expected",
    [
        ("abseiling,x1,0,10", "expected 5 fields"),
        ("abseiling,x1,zero,10,train", "'time_start' must be a whole number"),
        ("abseiling,x1,10,10,train", "time_end must be greater"),
        (",x1,0,10,train", "empty label"),
        ("abseiling,../x1,0,10,train", "youtube_id must be a non-empty id without '/'"),
    ],
)
def test_kinetics_malformed_csv_row_names_file_line_and_text(tmp_path, row, expected):
    (tmp_path / "bad.csv").write_text(f"label,youtube_id,time_start,time_end,split\nabseiling,x0,0,10,train\n{row}\n")
    with pytest.raises(AnnotationFormatError, match=re.escape(expected)) as err:
        read_kinetics(
            K400_DIR / "label_map.txt", train=tmp_path / "bad.csv", test=K400_DIR / "2020_release/validate.csv"
        )
    assert f"{tmp_path / 'bad.csv'}:3:" in str(err.value) and repr(row) in str(err.value)


def test_fedvssl_style_list_maps_ids_by_name_and_reports_bad_lines(tmp_path):
    (tmp_path / "labels.txt").write_text("abseiling\nair drumming\nhurling (sport)\n")
    (tmp_path / "classInd.txt").write_text("1 hurling_(sport)\n2 abseiling\n3 air_drumming\n")
    with gzip.open(tmp_path / "train.txt.gz", "wt") as f:
        f.write("abseiling/a_000001_000011 2\nhurling_(sport)/b_000000_000010 1\n")
    (tmp_path / "val.csv").write_text("label,youtube_id,time_start,time_end,split,is_cc\nair drumming,c,3,13,val,0\n")
    split = read_kinetics(
        tmp_path / "labels.txt",
        train=tmp_path / "train.txt.gz",
        test=tmp_path / "val.csv",
        train_class_index=tmp_path / "classInd.txt",
        base_dir=tmp_path,
    )
    assert [(r.path, r.label, r.class_name) for r in split.train] == [
        ("train/abseiling/a_000001_000011.mp4", 0, "abseiling"),
        ("train/hurling_(sport)/b_000000_000010.mp4", 2, "hurling (sport)"),
    ]
    assert set(split.source_sha256) == {"labels.txt", "train.txt.gz", "val.csv", "classInd.txt"}
    with gzip.open(tmp_path / "train.txt.gz", "wt") as f:
        f.write("abseiling/a_000001_000011 2\nabseiling/b_000000_000010 3\n")
    with pytest.raises(
        AnnotationFormatError, match=r"train\.txt\.gz:2: class id 3 is 'air_drumming' in classInd\.txt, not 'abseiling'"
    ):
        read_kinetics(
            tmp_path / "labels.txt",
            train=tmp_path / "train.txt.gz",
            test=tmp_path / "val.csv",
            train_class_index=tmp_path / "classInd.txt",
        )
    (tmp_path / "classInd.txt").write_text("1 hurling_(sport)\n2 abseiling\n3 air_guitar\n")
    with pytest.raises(
        AnnotationFormatError, match=r"classInd\.txt:3: class name not in the label map.*'3 air_guitar'"
    ):
        read_kinetics(
            tmp_path / "labels.txt",
            train=tmp_path / "train.txt.gz",
            test=tmp_path / "val.csv",
            train_class_index=tmp_path / "classInd.txt",
        )


# ---------------------------------------------------------------- configs


def test_dataset_configs_have_required_keys_and_synthetic_layouts(tmp_path):
    options = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
    assert options == [
        "cifar10",
        "cifar100",
        "hmdb51",
        "kinetics400",
        "synthetic_cifar10",
        "synthetic_cifar100",
        "synthetic_hmdb51",
        "synthetic_kinetics",
        "synthetic_tiny_imagenet",
        "synthetic_ucf101",
        "tiny_imagenet",
        "ucf101",
    ]
    for option in options:
        cfg = dataset_cfg(option, tmp_path)
        assert {"name", "id", "split", "root", "annotations", "synthetic"} <= set(cfg)
        assert cfg["synthetic"] is option.startswith("synthetic_")
        assert cfg["id"] == {"synthetic_kinetics": "synthetic_kinetics"}.get(option, option)
    assert dataset_cfg("ucf101", tmp_path)["annotations"] == str(UCF_DIR)
    assert dataset_cfg("ucf101", tmp_path)["root"] == f"{tmp_path}/ucf101/UCF-101"
    assert read_ucf101(dataset_cfg("ucf101")["annotations"], 1).train == load_annotations(dataset_cfg("ucf101")).train
    assert len(load_annotations(dataset_cfg("hmdb51")).test) == 1530

    # the synthetic Kinetics layout: annotations/{train,validate}.csv + label_map.txt
    ann = tmp_path / "synthetic" / "kinetics" / "annotations"
    ann.mkdir(parents=True)
    (ann / "label_map.txt").write_text("class a\nclass b\n")
    (ann / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\nclass b,syn00000001,0,2,train,0\n"
    )
    (ann / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\nclass a,syn00000002,0,2,val,0\n"
    )
    split = load_annotations(dataset_cfg("synthetic_kinetics", tmp_path))
    assert split.dataset == "synthetic_kinetics" and split.classes == ["class a", "class b"]
    assert [(r.path, r.label) for r in split.train + split.test] == [
        ("train/class_b/syn00000001_000000_000002.mp4", 1),
        ("val/class_a/syn00000002_000000_000002.mp4", 0),
    ]
    assert set(split.source_sha256) == {"label_map.txt", "train.csv", "validate.csv"}

    write_ucf(
        tmp_path / "synthetic" / "ucf101" / "ucfTrainTestlist",
        ["Archery/v_Archery_g01_c01.avi 1"],
        ["Basketball/v_Basketball_g01_c01.avi"],
    )
    assert load_annotations(dataset_cfg("synthetic_ucf101", tmp_path)).dataset == "synthetic_ucf101"
    hmdb = tmp_path / "synthetic" / "hmdb51" / "testTrainMulti_7030_splits"
    hmdb.mkdir(parents=True)
    (hmdb / "run_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \n")
    assert len(load_annotations(dataset_cfg("synthetic_hmdb51", tmp_path)).train) == 1

    with pytest.raises(ValueError, match="dataset.name must be one of"):
        load_annotations({"name": "ucf-101", "annotations": str(UCF_DIR), "split": 1})
    with pytest.raises(ValueError, match="'dataset.annotations' is missing"):
        load_annotations({"name": "ucf101", "split": 1})


def test_a_new_dataset_reader_is_one_registered_class(tmp_path):
    """load_annotations dispatches on dataset.name through the DATASET_READERS registry; an entry
    must subclass DatasetReader (checked at registration)."""
    from benchmark.data.annotations import DatasetReader, read_ucf101
    from benchmark.registry import DATASET_READERS, register_dataset_reader

    assert {"ucf101", "hmdb51", "kinetics400", "kinetics"} <= set(DATASET_READERS.names())
    with pytest.raises(TypeError, match="is not a subclass of benchmark.data.annotations.DatasetReader"):
        register_dataset_reader("not_a_reader")(dict)

    @register_dataset_reader("ucf101_copy_for_test")
    class UCFCopy(DatasetReader):
        def read(self, dataset_cfg, directory):
            return read_ucf101(directory, dataset_cfg["split"])

    try:
        split = load_annotations({"name": "ucf101_copy_for_test", "annotations": str(UCF_DIR), "split": 1})
        official = load_annotations({"name": "ucf101", "annotations": str(UCF_DIR), "split": 1})
        assert split.train == official.train and split.test == official.test and len(split.classes) == 101
        assert split.dataset == "ucf101_copy_for_test"  # no dataset.id: the reader's name
    finally:
        DATASET_READERS._items.pop("ucf101_copy_for_test")
