"""Checkpoint cache, download, validation and loading - offline, with files the tests make.

The released checkpoints are 1.5 GB each, so the registry entries are pointed at the tiny
fixture configuration and the "downloads" are served from files written here.
"""
from __future__ import annotations

import io
import sys

import pytest
import torch

from skinlib.glide import checkpoints, configs, random_model
from skinlib.glide.checkpoints import CheckpointInvalidError, CheckpointUnavailableError


@pytest.fixture(autouse=True)
def tiny_registry(monkeypatch):
    """Registry entries with the real names/files/URLs but the tiny fixture configs."""
    for name, opts in (("base-inpaint", configs.FIXTURE_TINY_BASE),
                       ("upsample-inpaint", configs.FIXTURE_TINY_UPSAMPLE)):
        real = configs.CHECKPOINTS[name]
        monkeypatch.setitem(configs.CHECKPOINTS, name, configs.CheckpointInfo(name, real.file, opts, 0))
    monkeypatch.delenv(checkpoints.ENV_CACHE, raising=False)


@pytest.fixture(scope="module")
def tiny_states():
    return {"base-inpaint": random_model(configs.FIXTURE_TINY_BASE, 1).state_dict(),
            "upsample-inpaint": random_model(configs.FIXTURE_TINY_UPSAMPLE, 2).state_dict()}


def _bytes(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class FakeResponse(io.BytesIO):
    """A urlopen() response whose Content-Length may lie and whose read may break off."""

    def __init__(self, data: bytes, length: int | None = None, fail_after: int | None = None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(n)


def _serve(monkeypatch, responses: dict):
    calls = []

    def fake_urlopen(url, timeout=60.0):
        calls.append(url)
        if url not in responses:
            raise OSError("network is unreachable")
        return responses[url]()

    monkeypatch.setattr(checkpoints, "_urlopen", fake_urlopen)
    return calls


def _offline(monkeypatch):
    return _serve(monkeypatch, {})


def test_default_cache_dir_env_var_and_parameter(tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoints.ENV_CACHE, str(tmp_path / "env"))
    assert checkpoints.default_cache_dir() == tmp_path / "env"
    assert checkpoints.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(checkpoints.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert checkpoints.default_cache_dir() == tmp_path / "xdg" / "skinlib" / "glide"


def test_offline_without_cache_names_file_url_and_folder(tmp_path, monkeypatch):
    _offline(monkeypatch)
    info = configs.CHECKPOINTS["base-inpaint"]
    with pytest.raises(CheckpointUnavailableError) as err:
        checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path, progress=False)
    msg = str(err.value)
    assert "base_inpaint.pt" in msg and info.url in msg and str(tmp_path / "base_inpaint.pt") in msg
    assert checkpoints.ENV_CACHE in msg
    assert list(tmp_path.iterdir()) == []
    assert isinstance(err.value, checkpoints.WeightsOfflineError)  # the main job's one "not run" case
    with pytest.raises(CheckpointUnavailableError, match="downloading is off"):
        checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path, download=False)


def test_an_http_error_or_a_broken_download_is_not_offline(tmp_path, monkeypatch, tiny_states):
    """Only "no connection" is offline; a server error or a download that broke off is a failure."""
    import urllib.error

    info = configs.CHECKPOINTS["base-inpaint"]

    def not_found():
        raise urllib.error.HTTPError(info.url, 404, "Not Found", {}, None)

    data = _bytes(tiny_states["base-inpaint"])
    for response, match in ((not_found, "404"), (lambda: FakeResponse(data, fail_after=1 << 10), "broke off")):
        _serve(monkeypatch, {info.url: response})
        with pytest.raises(CheckpointUnavailableError, match=match) as err:
            checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path, progress=False)
        assert not isinstance(err.value, checkpoints.WeightsOfflineError)


def test_download_fp16_file_url_validates_caches_and_casts(tmp_path, monkeypatch, tiny_states):
    """A real urllib download from a file:// URL; the file stores fp16 tensors."""
    served = tmp_path / "server"
    served.mkdir()
    fp16 = {k: v.half() for k, v in tiny_states["base-inpaint"].items()}
    (served / "base_inpaint.pt").write_bytes(_bytes(fp16))
    monkeypatch.setattr(configs, "CHECKPOINT_BASE_URL", served.as_uri() + "/")
    cache = tmp_path / "cache"
    model, info = checkpoints.load_model("base-inpaint", cache_dir=cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == ["base_inpaint.pt", "base_inpaint.pt.sha256.json",
                                                        checkpoints.PINS_FILE]
    assert info["sha256"] == checkpoints.file_sha256(served / "base_inpaint.pt")
    assert info["url"].startswith("file://") and info["path"] == str(cache / "base_inpaint.pt")
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, fp16[k].float()), k
    # now cached: no network needed
    calls = _offline(monkeypatch)
    _, info2 = checkpoints.load_model("base-inpaint", cache_dir=cache, progress=False)
    assert calls == [] and info2["sha256"] == info["sha256"]


def test_env_var_selects_cache_folder(tmp_path, monkeypatch, tiny_states):
    info = configs.CHECKPOINTS["upsample-inpaint"]
    data = _bytes(tiny_states["upsample-inpaint"])
    _serve(monkeypatch, {info.url: lambda: FakeResponse(data)})
    monkeypatch.setenv(checkpoints.ENV_CACHE, str(tmp_path / "from_env"))
    state, meta = checkpoints.fetch_state_dict("upsample-inpaint", progress=False)
    assert (tmp_path / "from_env" / "upsample_inpaint.pt").is_file()
    assert meta["path"] == str(tmp_path / "from_env" / "upsample_inpaint.pt")
    assert state.keys() == tiny_states["upsample-inpaint"].keys()


def test_truncated_download_is_never_saved(tmp_path, monkeypatch, tiny_states):
    info = configs.CHECKPOINTS["base-inpaint"]
    data = _bytes(tiny_states["base-inpaint"])
    _serve(monkeypatch, {info.url: lambda: FakeResponse(data[: len(data) // 2], length=len(data))})
    with pytest.raises(CheckpointInvalidError, match="truncated"):
        checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_truncated_body_without_length_fails_validation(tmp_path, monkeypatch, tiny_states):
    info = configs.CHECKPOINTS["base-inpaint"]
    data = _bytes(tiny_states["base-inpaint"])

    def response():
        r = FakeResponse(data[: len(data) // 2])
        r.headers = {}
        return r

    _serve(monkeypatch, {info.url: response})
    with pytest.raises(CheckpointInvalidError, match="not a readable"):
        checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_connection_broken_mid_download(tmp_path, monkeypatch, tiny_states):
    info = configs.CHECKPOINTS["base-inpaint"]
    data = _bytes(tiny_states["base-inpaint"])
    _serve(monkeypatch, {info.url: lambda: FakeResponse(data, fail_after=1 << 20)})
    with pytest.raises(CheckpointUnavailableError, match="broke off"):
        checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_wrong_model_downloaded_is_rejected(tmp_path, monkeypatch, tiny_states):
    info = configs.CHECKPOINTS["base-inpaint"]
    data = _bytes(tiny_states["upsample-inpaint"])  # the other model under the base URL
    _serve(monkeypatch, {info.url: lambda: FakeResponse(data)})
    with pytest.raises(CheckpointInvalidError) as err:
        checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path, progress=False)
    assert "does not match the model" in str(err.value) and "unexpected keys" in str(err.value)
    assert "shape mismatches" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cached_file_gives_clear_error_and_is_not_used(tmp_path, monkeypatch, tiny_states):
    calls = _offline(monkeypatch)
    path = tmp_path / "base_inpaint.pt"
    data = _bytes(tiny_states["base-inpaint"])
    path.write_bytes(data[:-1000])
    with pytest.raises(CheckpointInvalidError) as err:
        checkpoints.load_model("base-inpaint", cache_dir=tmp_path, progress=False)
    assert str(path) in str(err.value) and "Delete it" in str(err.value)
    assert configs.CHECKPOINTS["base-inpaint"].url in str(err.value)
    assert calls == [] and path.stat().st_size == len(data) - 1000


class NotATensor:
    pass


def test_pickled_code_is_refused(tmp_path, monkeypatch, tiny_states):
    _offline(monkeypatch)
    state = dict(tiny_states["base-inpaint"])
    state["payload"] = NotATensor()
    torch.save(state, tmp_path / "base_inpaint.pt")
    with pytest.raises(CheckpointInvalidError, match="not a readable"):
        checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path)


def test_shape_mismatch_and_missing_key_reported(tmp_path, tiny_states):
    state = dict(tiny_states["base-inpaint"])
    state["out.2.weight"] = torch.zeros(6, 32, 1, 1)
    del state["final_ln.bias"]
    with pytest.raises(CheckpointInvalidError) as err:
        checkpoints.validate_state_dict(state, configs.FIXTURE_TINY_BASE, "x.pt")
    assert "missing keys" in str(err.value) and "final_ln.bias" in str(err.value)
    assert "out.2.weight" in str(err.value)
    with pytest.raises(CheckpointInvalidError, match="not a state dict"):
        checkpoints.validate_state_dict([1, 2], configs.FIXTURE_TINY_BASE, "x.pt")


def test_local_folder_is_read_and_never_downloaded_into(tmp_path, monkeypatch, tiny_states):
    calls = _offline(monkeypatch)
    with pytest.raises(CheckpointUnavailableError) as err:
        checkpoints.fetch_state_dict("base-inpaint", folder=tmp_path)
    assert str(tmp_path) in str(err.value) and configs.CHECKPOINTS["base-inpaint"].url in str(err.value)
    torch.save(tiny_states["base-inpaint"], tmp_path / "base_inpaint.pt")
    state, info = checkpoints.fetch_state_dict("base-inpaint", folder=tmp_path)
    assert calls == [] and info["path"] == str(tmp_path / "base_inpaint.pt")
    assert all(torch.equal(state[k], v) for k, v in tiny_states["base-inpaint"].items())


def test_pipeline_from_local_folder(tmp_path, monkeypatch, tiny_states):
    from skinlib.glide import GlideInpainter

    _offline(monkeypatch)
    for name, file in (("base-inpaint", "base_inpaint.pt"), ("upsample-inpaint", "upsample_inpaint.pt")):
        torch.save(tiny_states[name], tmp_path / file)
    pipe = GlideInpainter.from_pretrained(str(tmp_path), device="cpu", cache_dir=tmp_path / "cache",
                                          base_respacing="2", upsample_respacing="2", progress=False)
    assert not pipe.is_random and "RANDOM" not in pipe.name
    assert pipe.identity["base"]["sha256"] == checkpoints.file_sha256(tmp_path / "base_inpaint.pt")
    assert pipe.identity["weights"] == str(tmp_path)
    assert (pipe.base_image_size, pipe.image_size) == (16, 32)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    keep = torch.ones(1, 1, 32, 32)
    keep[..., 10:, :] = 0
    out = pipe.inpaint(images, keep, "a red rash", [3])
    assert out.shape == (1, 3, 32, 32) and torch.equal(out[..., :10, :], images[..., :10, :])


def test_user_folder_gets_no_sidecar_files(tmp_path, monkeypatch, tiny_states):
    _offline(monkeypatch)
    torch.save(tiny_states["base-inpaint"], tmp_path / "base_inpaint.pt")
    _, info = checkpoints.fetch_state_dict("base-inpaint", folder=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["base_inpaint.pt"]
    assert len(info["sha256"]) == 64


def test_cached_files_are_pinned_at_first_use_and_a_changed_file_is_refused(tmp_path, monkeypatch, tiny_states):
    calls = _offline(monkeypatch)
    path, record = tmp_path / "base_inpaint.pt", tmp_path / checkpoints.PINS_FILE
    path.write_bytes(b"truncated")  # not pinned while it fails validation
    with pytest.raises(CheckpointInvalidError, match="not a readable"):
        checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path)
    assert not record.exists()
    torch.save(tiny_states["base-inpaint"], path)
    _, info = checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path)
    assert checkpoints.read_pins(tmp_path) == {"base_inpaint.pt": info["sha256"]}
    assert checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path)[1]["sha256"] == info["sha256"]

    # another valid model of the same architecture (same keys, shapes and size) put in its place
    other = random_model(configs.FIXTURE_TINY_BASE, 7).state_dict()
    torch.save(other, path)
    with pytest.raises(CheckpointInvalidError) as err:
        checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and info["sha256"] in msg and "changed or replaced" in msg
    assert f"on purpose, delete {record}" in msg and configs.CHECKPOINTS["base-inpaint"].url in msg
    # replaced on purpose: the user deletes the record; the new file is used and pinned
    record.unlink()
    state, info2 = checkpoints.fetch_state_dict("base-inpaint", cache_dir=tmp_path)
    assert info2["sha256"] != info["sha256"] and torch.equal(state["out.2.weight"], other["out.2.weight"])
    assert checkpoints.read_pins(tmp_path) == {"base_inpaint.pt": info2["sha256"]}
    assert calls == []


def test_a_download_that_differs_from_the_pinned_file_is_not_saved(tmp_path, monkeypatch, tiny_states):
    info = configs.CHECKPOINTS["upsample-inpaint"]
    first = _bytes(tiny_states["upsample-inpaint"])
    served = {info.url: lambda: FakeResponse(first)}
    _serve(monkeypatch, served)
    _, meta = checkpoints.fetch_state_dict("upsample-inpaint", cache_dir=tmp_path, progress=False)
    assert checkpoints.read_pins(tmp_path) == {"upsample_inpaint.pt": meta["sha256"]}
    (tmp_path / "upsample_inpaint.pt").unlink()
    changed = _bytes(random_model(configs.FIXTURE_TINY_UPSAMPLE, 9).state_dict())
    served[info.url] = lambda: FakeResponse(changed)
    with pytest.raises(CheckpointInvalidError, match=r"nothing was saved.*recorded when upsample_inpaint.pt was first"):
        checkpoints.fetch_state_dict("upsample-inpaint", cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "upsample_inpaint.pt").exists()
    served[info.url] = lambda: FakeResponse(first)  # the same file again: accepted
    assert checkpoints.fetch_state_dict("upsample-inpaint", cache_dir=tmp_path, progress=False)[1]["sha256"] == meta["sha256"]


def test_official_engine_offline_names_both_files_and_the_cache_folder(tmp_path, monkeypatch):
    """weights="official" (the study profile) with an empty cache on an offline machine."""
    from skinlib.glide.pipeline import GlideInpainter

    _offline(monkeypatch)
    with pytest.raises(checkpoints.WeightsOfflineError) as err:
        GlideInpainter.from_pretrained("official", cache_dir=tmp_path, device="cpu", progress=False)
    msg = str(err.value)
    assert "base_inpaint.pt" in msg and "upsample_inpaint.pt" in msg and f"cache folder {tmp_path}" in msg
    assert list(tmp_path.iterdir()) == []
