"""What GLIDE's weights were trained on is checked (skinlib.evaluation.provenance): variants made
by weights trained on all crops, or on another train split, are refused naming the weights'
glide_options.json; weights without a training record are 'unverified'; OpenAI's released weights
and the tiny-random smoke models are accepted by their recorded identity, never by a missing field."""
from __future__ import annotations

import json
import shutil

import pytest

from skinlib.augment.generate import generate_variants, weights_provenance
from skinlib.data.split import write_split
from skinlib.evaluation.provenance import LeakError, check_generated_folder
from skinlib.glide import finetune
from skinlib.glide.pipeline import GlideInpainter
from skinlib.io import load_json, read_csv, save_json

from _eval_data import OFFICIAL, make_split_crops, make_variants

QUIET = dict(log=lambda *a: None)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return make_split_crops(tmp_path_factory.mktemp("prov") / "crops", n_patients=8, per_patient=1, size=256)


def _train(crops, out, split="train", max_images=4):
    cfg = finetune.FinetuneConfig(model="tiny", batch_size=2, max_images=max_images, epochs=1, max_steps=1, lr=1e-3,
                                  n_samples=1, sample_every=0, progress=False, split=split, seed=3)
    finetune.train("base", crops, out, cfg, **QUIET)
    finetune.train("upsampler", crops, out, cfg, patch_size=64, **QUIET)
    return out


def _variants(crops, weights, out):
    pipe = GlideInpainter.from_pretrained(str(weights), device="cpu", base_respacing="2", upsample_respacing="2")
    generate_variants(crops, out, inpainter=pipe, runs=1, steps=1, max_sources=2, gifs="none", progress=False, **QUIET)
    return out


@pytest.fixture(scope="module")
def train_weights(crops, tmp_path_factory):
    return _train(crops, tmp_path_factory.mktemp("w") / "train")


def test_weights_trained_on_the_current_train_split_are_verified(crops, train_weights, tmp_path):
    prov = check_generated_folder(_variants(crops, train_weights, tmp_path / "v"), crops)
    assert (prov.status, prov.trained_on_split) == ("verified", "train")
    assert "base: trained on the current train-split crops" in prov.detail


def test_weights_trained_on_all_crops_are_refused_naming_their_record(crops, tmp_path):
    weights = _train(crops, tmp_path / "all", split=None)
    variants = _variants(crops, weights, tmp_path / "v")
    assert {r["trained_on_split"] for r in read_csv(variants / "manifest.csv")} == {"all"}
    with pytest.raises(LeakError, match=r"all/glide_options\.json: the base model .* trained on split 'all'"):
        check_generated_folder(variants, crops)


def test_weights_trained_on_another_split_are_refused(crops, tmp_path):
    weights = _train(crops, tmp_path / "train", max_images=None)    # every train crop of the first split
    resplit = shutil.copytree(crops, tmp_path / "crops")
    write_split(resplit, test_share=0.25, seed=5, **QUIET)      # other test patients: other train crops
    assert read_csv(resplit / "split.csv") != read_csv(crops / "split.csv")
    variants = _variants(resplit, weights, tmp_path / "v")  # sources are train crops of the new split
    with pytest.raises(LeakError, match=r"train/glide_options\.json: the base model .* trained on other crops"):
        check_generated_folder(variants, resplit)


def test_weights_without_a_training_record_are_unverified_not_accepted(crops, train_weights, tmp_path):
    weights = shutil.copytree(train_weights, tmp_path / "norecord")
    meta = load_json(weights / "glide_options.json")
    for entry in meta["models"].values():
        del entry["trained_on_split"]
    save_json(weights / "glide_options.json", meta)
    variants = _variants(crops, weights, tmp_path / "v")
    assert {r["trained_on_split"] for r in read_csv(variants / "manifest.csv")} == {""}     # was "none"
    prov = check_generated_folder(variants, crops)
    assert prov.status == "unverified" and "norecord/glide_options.json" in prov.detail
    # the manifest's model column gone too: nothing says what made the variants
    rows = read_csv(variants / "manifest.csv")
    from skinlib.io import write_csv
    write_csv(variants / "manifest.csv", [dict(r, model="", trained_on_split="none") for r in rows])
    (variants / "generation.json").unlink()
    assert check_generated_folder(variants, crops).status == "unverified"


def test_tiny_random_and_official_weights_are_accepted_by_their_identity(crops, tmp_path):
    pipe = GlideInpainter.from_pretrained("tiny-random", device="cpu", base_respacing="2", upsample_respacing="2")
    variants = tmp_path / "random"
    generate_variants(crops, variants, inpainter=pipe, runs=1, steps=1, max_sources=2, gifs="none",
                      progress=False, **QUIET)
    prov = check_generated_folder(variants, crops)
    assert (prov.status, prov.trained_on_split) == ("verified", "none") and "tiny RANDOM" in prov.detail
    assert weights_provenance(OFFICIAL, False)["trained_on_split"] == "none"
    rows = read_csv(crops / "manifest.csv")
    official = make_variants(tmp_path / "official", crops, [r for r in rows if r["split"] == "train"][:3],
                             model=OFFICIAL)
    prov = check_generated_folder(official, crops)
    assert (prov.status, prov.trained_on_split) == ("verified", "none") and "OpenAI's released" in prov.detail
    # "official" claimed without the released files' identity (no URL / sha256) is not accepted
    claimed = json.loads(json.dumps(OFFICIAL))
    del claimed["upsampler"]["sha256"]
    assert weights_provenance(claimed, False)["trained_on_split"] == ""
    fake = make_variants(tmp_path / "claimed", crops, [r for r in rows if r["split"] == "train"][:3], model=claimed)
    assert check_generated_folder(fake, crops).status == "unverified"
