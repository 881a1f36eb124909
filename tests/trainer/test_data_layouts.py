"""trainer.data.layouts: layout detection, class maps and the errors users see."""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.core import synth
from edge_asd.core.audio_io import write_wav
from edge_asd.core.errors import UserError
from trainer.data import layouts
from trainer.data.layouts import FIXED_41_CLASSES, DataError, build_index, detect_layout

_BLIP = np.zeros(160, dtype=np.float32)  # the layouts never decode audio: tiny files suffice


def _touch(root, *rel: str) -> None:
    for r in rel:
        write_wav(root / r, _BLIP)


@pytest.fixture(scope="module")
def synth_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth.make_dataset(root, types=2, ids=2, train_clips=2, test_clips=1, seed=3)
    return root


def test_generated_2020_tree_is_detected_with_its_class_map(synth_tree):
    assert detect_layout([synth_tree]) == "dcase2020"
    index = build_index([synth_tree])
    assert index.layout == "dcase2020"
    assert index.class_names == ["ToyCar/id_01", "ToyCar/id_02", "fan/id_00", "fan/id_02"]
    assert index.classes == index.class_names
    assert len(index.train) == 8 and all(c.label == 0 for c in index.train)
    labels = sorted((c.class_name, c.label) for c in index.test)
    assert labels == [(n, lab) for n in index.class_names for lab in (0, 1)]
    clip = next(c for c in index.test if c.label == 1 and c.class_name == "fan/id_02")
    assert index.class_index(clip) == 3 and index.score_classes(clip) == [3]
    assert clip.machine_type == "fan" and clip.machine_id == "id_02"


def test_the_same_tree_from_dev_data_or_a_type_folder(synth_tree):
    assert build_index([synth_tree / "dev_data"]).class_names == ["ToyCar/id_01", "ToyCar/id_02", "fan/id_00", "fan/id_02"]
    single = build_index([synth_tree / "dev_data" / "fan"])
    assert single.class_names == ["fan/id_00", "fan/id_02"]


def test_six_types_use_the_fixed_41_class_map(tmp_path):
    for machine_type, ids in layouts.DCASE2020_IDS.items():
        _touch(tmp_path / "dev_data" / machine_type / "train", f"normal_id_{ids[0]:02d}_00000000.wav")
        _touch(tmp_path / "dev_data" / machine_type / "test", f"anomaly_id_{ids[0]:02d}_00000000.wav")
    # the additional training set of the eval IDs, and unlabelled eval test clips
    _touch(tmp_path / "eval_data" / "valve" / "train", "normal_id_05_00000000.wav")
    _touch(tmp_path / "eval_data" / "valve" / "test", "id_05_00000000.wav")
    index = build_index([tmp_path])
    assert index.class_names == list(FIXED_41_CLASSES) and len(FIXED_41_CLASSES) == 41
    by_name = {c.class_name: index.class_index(c) for c in index.clips}
    assert by_name["fan/id_00"] == 0 and by_name["ToyCar/id_01"] == 21
    assert by_name["ToyConveyor/id_01"] == 28 and by_name["valve/id_05"] == 39
    eval_clip = next(c for c in index.test if c.path.name == "id_05_00000000.wav")
    assert eval_clip.label is None and index.summary()["test_unlabelled"] == 1


def test_two_roots_are_merged(tmp_path):
    _touch(tmp_path / "a" / "fan" / "train", "normal_id_00_00000000.wav")
    _touch(tmp_path / "b" / "fan" / "train", "normal_id_01_00000000.wav")
    index = build_index([tmp_path / "a", tmp_path / "b"])
    assert index.class_names == ["fan/id_00", "fan/id_01"]


def test_shared_dcase2020_mini(shared_data):
    index = build_index([shared_data / "dcase2020-mini"])
    assert index.layout == "dcase2020"
    assert index.class_names == ["ToyCar/id_01"]
    assert sorted(c.label for c in index.test) == [0, 0, 1]
    assert not index.train


def test_shared_dcase2023_mini_sections_and_attributes(shared_data):
    root = shared_data / "dcase2023-mini"
    assert detect_layout([root]) == "dcase2021"
    index = build_index([root])
    types = ["ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve"]
    assert index.class_names == [f"{t}/section_00" for t in types]
    clip = next(c for c in index.clips if c.path.name.startswith("section_00_target_test_anomaly_0015"))
    assert (clip.domain, clip.label, clip.attrs, clip.split) == ("target", 1, "car_A2_spd_6_mic_2", "test")
    by_attr = build_index([root], class_by="attribute")
    assert "ToyCar/section_00/car_C2_spd_31V_mic_1" in by_attr.class_names
    assert "valve/section_00/pat_01" in by_attr.class_names
    assert all(name.count("/") == 2 for name in by_attr.class_names)
    # a test clip with attributes unseen in training is scored against its whole section
    fan_test = next(c for c in by_attr.test if c.machine_type == "fan" and c.attrs == "m-n_Y")
    assert by_attr.score_classes(fan_test) == [by_attr.class_names.index("fan/section_00/m-n_X")]


def test_dcase2021_generated_tree_with_eval_names(tmp_path):
    _touch(
        tmp_path / "gearbox" / "train",
        "section_00_source_train_normal_0000_volt_1.0.wav",
        "section_01_target_train_normal_0001_volt_2.0.wav",
    )
    _touch(tmp_path / "gearbox" / "test", "section_01_0005.wav", "section_00_source_test_anomaly_0002_volt_1.0.wav")
    index = build_index([tmp_path], layout="dcase2021")
    assert index.class_names == ["gearbox/section_00", "gearbox/section_01"]
    unlabelled = next(c for c in index.test if c.label is None)
    assert unlabelled.class_name == "gearbox/section_01"


def test_own_machines(tmp_path):
    _touch(tmp_path / "compressor", "a.wav", "b.wav")
    _touch(tmp_path / "press" / "left", "x.wav")
    _touch(tmp_path / "press" / "right", "y.wav")
    assert detect_layout([tmp_path]) == "own"
    index = build_index([tmp_path])
    assert index.class_names == ["compressor", "press/left", "press/right"]
    assert all(c.split == "train" and c.label == 0 for c in index.clips)


def test_manifest(tmp_path):
    _touch(tmp_path / "clips", "a.wav", "b.wav", "c.wav", "d.wav")
    manifest = tmp_path / "list.csv"
    manifest.write_text("file,class,label\nclips/a.wav,pump-7,\nclips/b.wav,pump-7,normal\nclips/c.wav,pump-7,1\nclips/d.wav,fan-2\n")
    assert detect_layout([manifest]) == "manifest"
    index = build_index([manifest])
    assert index.layout == "manifest" and index.class_names == ["fan-2", "pump-7"]
    got = {c.path.name: (c.split, c.label) for c in index.clips}
    assert got == {"a.wav": ("train", 0), "b.wav": ("test", 0), "c.wav": ("test", 1), "d.wav": ("train", 0)}
    assert all(c.path.is_absolute() and c.path.is_file() for c in index.clips)
    no_header = tmp_path / "plain.csv"
    no_header.write_text("clips/a.wav,pump-7\n")
    assert build_index([no_header]).class_names == ["pump-7"]


def test_manifest_errors_name_the_line(tmp_path):
    _touch(tmp_path, "a.wav")
    bad_label = tmp_path / "bad.csv"
    bad_label.write_text("file,class,label\na.wav,m,broken\n")
    with pytest.raises(DataError, match=r"bad.csv line 2.*normal/anomaly"):
        build_index([bad_label])
    missing = tmp_path / "missing.csv"
    missing.write_text("file,class\nnope.wav,m\n")
    with pytest.raises(DataError, match="nope.wav does not exist"):
        build_index([missing])


def test_missing_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "nowhere")):
        build_index([tmp_path / "nowhere"])


def test_empty_folder_is_a_user_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no \.wav files found under .*empty"):
        build_index([tmp_path / "empty"])
    with pytest.raises(DataError, match="no .wav files"):
        build_index([tmp_path / "empty"], layout="dcase2020")


def test_unknown_layout_and_class_by(tmp_path):
    _touch(tmp_path, "a.wav")
    with pytest.raises(DataError, match="unknown data layout 'dcase1999'"):
        build_index([tmp_path], layout="dcase1999")
    with pytest.raises(DataError, match="class_by"):
        build_index([tmp_path], class_by="colour")


def test_forced_layout_that_does_not_match(tmp_path):
    _touch(tmp_path / "pump", "a.wav")
    with pytest.raises(DataError, match="no DCASE 2020"):
        build_index([tmp_path], layout="dcase2020")


def test_test_clip_outside_the_class_map_names_the_file(tmp_path):
    _touch(tmp_path / "fan" / "train", "normal_id_00_00000000.wav")
    _touch(tmp_path / "fan" / "test", "anomaly_id_04_00000000.wav")
    with pytest.raises(DataError, match=r"anomaly_id_04_00000000\.wav.*fan/id_04.*not in the class map"):
        build_index([tmp_path])


def test_stored_class_map_overrides_and_is_checked(tmp_path):
    _touch(tmp_path / "fan" / "train", "normal_id_00_00000000.wav")
    index = build_index([tmp_path], classes=["fan/id_02", "fan/id_00"])
    assert index.class_index(index.clips[0]) == 1
    with pytest.raises(DataError, match="not in the class map"):
        build_index([tmp_path], classes=["pump/id_00"])
