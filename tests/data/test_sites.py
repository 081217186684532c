"""Sites (issue 20): the demo's second SYNTHETIC site, its patients held out as split "ood", and
everything that must never train on them (generators' sources, fold views, the leak checks)."""
from __future__ import annotations

import pytest
from PIL import Image

from skinlib.data import demo
from skinlib.data.metadata import dataset_sites
from skinlib.data.split import held_out_sites, split_patients, write_fold_views, write_split
from skinlib.io import read_csv, sha256_file, write_csv

from _eval_data import make_split_crops, make_variants

SMALL = dict(n_diseases=1, n_patients=2, n_examples=1, n_photos=1, min_side=96, max_side=128)


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    return demo.make_demo_dataset(tmp_path_factory.mktemp("sites") / "d", **SMALL, n_ood_patients=8, progress=False)


def test_site_b_is_synthetic_mostly_dark_skin_and_leaves_site_a_byte_identical(two_sites, tmp_path):
    rows = read_csv(two_sites / demo.MANIFEST)
    b = [r for r in rows if r["site"] == "B"]
    assert [r["site"] for r in rows] == ["A"] * 2 + ["B"] * 8 and dataset_sites(two_sites)["persona3"] == "B"
    assert sum(int(r["fitzpatrick"]) >= 5 for r in b) == 6 and all(int(r["fitzpatrick"]) >= 3 for r in b)
    with Image.open(two_sites / b[0]["photo"]) as im:       # labelled SYNTHETIC like site A
        assert im.text["Source"] == demo.SOURCE_TAG and "SYNTHETIC" in im.text["Comment"]
        assert "SYNTHETIC" in im.text["Site"]
    assert "site" in (two_sites / demo.README).read_text().lower()
    alone = demo.make_demo_dataset(tmp_path / "a", **SMALL, progress=False)
    for r in rows[:2]:
        assert sha256_file(alone / r["photo"]) == sha256_file(two_sites / r["photo"])
    # another camera: site B's photos are not site A's renderer with another patient number
    a_img, _, _ = demo.render_photo("maculopapular_rash", seed=0, patient=3, example=1, photo=1, min_side=96, max_side=128)
    b_img, _, _ = demo.render_photo("maculopapular_rash", seed=0, patient=3, example=1, photo=1, min_side=96,
                                    max_side=128, site="B", site_index=0)
    assert (a_img != b_img).mean() > 0.5
    with pytest.raises(ValueError, match="unknown demo site"):
        demo.render_photo("maculopapular_rash", seed=0, patient=3, example=1, photo=1, site="C")


def test_held_out_site_is_split_ood_and_the_rest_is_split_as_if_it_were_absent(tmp_path):
    with_b = make_split_crops(tmp_path / "b" / "crops", n_patients=12, ood_patients=4)
    split = {r["patient"]: r for r in read_csv(with_b / "split.csv")}
    assert {p for p, r in split.items() if r["split"] == "ood"} == {f"persona{i}" for i in range(9, 13)}
    assert all(r["site"] == ("B" if r["split"] == "ood" else "A") for r in split.values())
    # the 8 site-A patients are split as if site B did not exist
    site_a = {p: r["disease"] for p, r in split.items() if r["site"] == "A"}
    alone = split_patients(site_a, 0.25, 0, strata={p: split[p]["skin_group"] for p in site_a})
    assert alone == {p: r["split"] for p, r in split.items() if r["split"] != "ood"}
    assert all(r["split"] == split[r["patient"]]["split"] for r in read_csv(with_b / "manifest.csv"))
    assert held_out_sites(with_b, "auto") == ()              # not the demo dataset: nothing held out by "auto"
    with pytest.raises(ValueError, match=r"no patient of site\(s\) \['C'\].*sites found: \['A', 'B'\]"):
        write_split(with_b, ood_sites="B,C")
    with pytest.raises(ValueError, match="every site"):
        write_split(with_b, ood_sites=["A", "B"])


def test_fold_views_keep_the_held_out_site_out_of_every_fold(tmp_path):
    crops = make_split_crops(tmp_path / "crops", n_patients=12, ood_patients=3)
    folds = write_fold_views(crops, 3, root=tmp_path, log=lambda *_: None)
    ood = {f"persona{i}" for i in (10, 11, 12)}
    assert not ood & set(folds) and all(f is not None for f in folds.values()) and len(folds) == 9
    for f in range(3):
        sides = {r["patient"]: r["split"] for r in read_csv(tmp_path / f"fold{f}" / "crops" / "split.csv")}
        assert {p for p, s in sides.items() if s == "ood"} == ood


def test_variants_of_held_out_site_crops_are_refused_as_a_leak(tmp_path):
    from skinlib.evaluation.provenance import LeakError, check_generated_folder

    crops = make_split_crops(tmp_path / "crops", n_patients=10, ood_patients=3)
    rows = read_csv(crops / "manifest.csv")
    leak = make_variants(tmp_path / "leak", crops, [r for r in rows if r["split"] == "train"][:2]
                         + [r for r in rows if r["split"] == "ood"][:1])
    with pytest.raises(LeakError, match="1 of 3 images were made from crops of TEST patients.*split ood"):
        check_generated_folder(leak, crops)


def test_a_patient_at_two_sites_is_an_error_naming_the_file(tmp_path):
    write_csv(tmp_path / "metadata.csv", [{"patient": "p1", "site": "A"}, {"patient": "p1", "site": "B"}])
    with pytest.raises(ValueError, match="metadata.csv: patient p1 is listed at two sites"):
        dataset_sites(tmp_path)
