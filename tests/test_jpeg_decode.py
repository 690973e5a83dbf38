"""The batched JPEG path (decode where the model runs, orient and resize there) against Pillow's.

On this CPU the same code runs with torchvision's libjpeg decoder; on CUDA only the decoder
changes (nvJPEG), and scripts/bench_gpu.py repeats the comparison there.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from retrieval import images, jpeg_gpu
from retrieval.errors import BadImageError
from retrieval.config import ImageConfig
from retrieval.engine.forward import Decoded, Skipped, decoded_stream, jpeg_device, normalize

from .conftest import synth_photo

CPU = torch.device("cpu")


def _exif_jpeg(im: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_matches_pillow_exif_transpose(orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    im = Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8), "RGB")
    im.getexif()[0x0112] = orientation
    want = np.asarray(ImageOps.exif_transpose(im))
    got = jpeg_gpu.upright(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1), orientation)
    np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), want)


def test_resize_is_pillow_bicubic_up_to_rounding() -> None:
    im = synth_photo(3, (640, 480))
    want = np.asarray(im.resize((224, 168), Image.Resampling.BICUBIC), np.int16)
    got = jpeg_gpu.resize(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1), (224, 168))
    diff = np.abs(got.permute(1, 2, 0).numpy().astype(np.int16) - want)
    # Pillow rounds to 8 bits between its horizontal and vertical passes; torch rounds once
    assert got.dtype == torch.uint8 and diff.max() <= 2 and diff.mean() < 0.3, (diff.max(), diff.mean())


def test_normalize_is_bit_identical_to_the_numpy_query_path() -> None:
    im = synth_photo(5, (210, 154))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    want = images.normalize(im, mean=mean, std=std)
    got = normalize(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None], mean=mean, std=std)[0]
    assert torch.equal(got, torch.from_numpy(want))


def test_read_file_keeps_only_plain_complete_jpegs(tmp_path: Path, awkward_dir: Path) -> None:
    kw = dict(sizes=(224,), patch_size=14, keep_jpeg=True)
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(_exif_jpeg(synth_photo(1, (300, 200)), 6))
    got = images.read_file(str(plain), **kw)
    assert isinstance(got, images.EncodedJpeg)
    assert got.orientation == 6 and got.original_wh == (200, 300) and got.targets == ((154, 224),)
    # decoded by Pillow in the worker: CMYK, MPO, not a JPEG
    for name in ("jpeg_cmyk_adobe.jpg", "jpeg_mpo_stereo.mpo", "misnamed_png_as.jpg"):
        assert isinstance(images.read_file(str(awkward_dir / name), **kw), images.PreparedFile), name
    with pytest.raises(BadImageError, match="truncated"):
        images.read_file(str(awkward_dir / "jpeg_truncated_baseline_photo.jpg"), **kw)
    assert isinstance(images.read_file(str(plain), sizes=(224,), patch_size=14), images.PreparedFile)


def _stream(paths: list[str], tiny, jpegs_on: torch.device | None) -> dict[str, Decoded | Skipped]:
    out = decoded_stream(paths, backbone=tiny, image=ImageConfig(size=224), workers=0, jpegs_on=jpegs_on, jpegs_per_decode=5)
    return {r.path: r for r in out}


def test_awkward_set_gives_the_same_outcomes_on_either_path(tiny, awkward_dir: Path) -> None:
    paths = sorted(str(p) for p in awkward_dir.iterdir() if p.name != "MANIFEST.tsv")
    pillow, device = _stream(paths, tiny, None), _stream(paths, tiny, CPU)
    assert sorted(pillow) == sorted(device) == paths  # each file exactly once
    for p in paths:
        a, b = pillow[p], device[p]
        assert type(a) is type(b), p
        if isinstance(a, Skipped):
            assert isinstance(b, Skipped) and a.reason == b.reason, p
            continue
        assert isinstance(b, Decoded)
        assert (a.original_wh, a.sha256, a.nbytes) == (b.original_wh, b.sha256, b.nbytes), p
        x, y = a.pixels[0], b.pixels[0]
        assert x.shape == y.shape, p
        mad = (x.float() - y.float()).abs().mean().item()
        # DCT-scaled vs full decode, then resize: ~2.3 levels on the 1800x1200 photos; a wrong
        # orientation or colour would be tens. Corrupt entropy data decodes to different garbage.
        assert mad < (10.0 if "corrupt" in p else 3.0), (p, mad)


def test_device_path_descriptors_match_pillow_path(tiny, tmp_path: Path) -> None:
    paths = []
    for i in range(6):  # orientations, sizes and a grey picture
        im = synth_photo(10 + i, (800, 600) if i % 2 else (600, 900))
        p = tmp_path / f"p{i}.jpg"
        p.write_bytes(_exif_jpeg(im.convert("L") if i == 5 else im, i + 1))
        paths.append(str(p))
    pillow, device = _stream(paths, tiny, None), _stream(paths, tiny, CPU)
    assert all(isinstance(device[p], Decoded) and device[p].pixels[0].device == CPU for p in paths)
    for p in paths:
        xa = normalize(pillow[p].pixels[0][None], mean=tiny.mean, std=tiny.std)
        xb = normalize(device[p].pixels[0][None], mean=tiny.mean, std=tiny.std)
        ta, tb = tiny.encode(xa), tiny.encode(xb)
        cos = torch.nn.functional.cosine_similarity(ta.cls, tb.cls).item()
        assert cos > 0.999, (p, cos)


def test_a_file_the_device_refuses_falls_back_to_pillow(tiny, tmp_path: Path, monkeypatch) -> None:
    good = tmp_path / "good.jpg"
    synth_photo(2).save(good, quality=90)
    real = jpeg_gpu.decode
    calls = []

    def refuse_all(datas, device):
        calls.append(len(datas))
        return [None] * len(datas)

    monkeypatch.setattr(jpeg_gpu, "decode", refuse_all)
    got = _stream([str(good)], tiny, CPU)[str(good)]
    assert calls == [1] and isinstance(got, Decoded)
    monkeypatch.setattr(jpeg_gpu, "decode", real)
    assert torch.equal(got.pixels[0], _stream([str(good)], tiny, None)[str(good)].pixels[0])


def test_decode_isolates_the_file_that_fails_a_batch(awkward_dir: Path) -> None:
    ok = (awkward_dir / "jpeg_rgb_reference.jpg").read_bytes()
    bad = b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9"  # SOI, nothing decodable, EOI
    out = jpeg_gpu.decode([ok, bad, ok], CPU)
    assert out[1] is None and out[0] is not None and torch.equal(out[0], out[2])
    assert tuple(out[0].shape) == (3, 100, 100)


def test_jpeg_device_choice() -> None:
    assert jpeg_device("auto", CPU) is None and jpeg_device("cpu", CPU) is None
    assert jpeg_device("gpu", CPU) is None  # no CUDA here: warns and uses Pillow
    with pytest.raises(ValueError, match="unknown decoder"):
        jpeg_device("nvjpeg", CPU)


def test_a_jpeg_and_a_png_of_one_shape_share_a_batch(tiny, tmp_path: Path) -> None:
    from retrieval.engine.forward import forward_batches

    a, b = tmp_path / "a.jpg", tmp_path / "b.png"
    synth_photo(1).save(a, quality=90)
    synth_photo(1).save(b)
    stream = list(_stream([str(a), str(b)], tiny, CPU).values())
    assert {type(r) for r in stream} == {Decoded}
    (batch,) = forward_batches(iter(stream), backbone=tiny, batch=2)
    assert len(batch.items) == 2 and batch.tokens.cls.shape[0] == 2


@pytest.mark.subprocess
def test_decoder_processes_do_not_load_torch(tiny, tmp_path: Path, monkeypatch) -> None:
    """A spawned worker imports the modules of its job and initialiser: neither may pull in torch
    (each worker would pay seconds and hundreds of MB for it)."""
    import subprocess
    import sys

    from retrieval.engine import forward

    seen: dict[str, object] = {}

    class Recorder(forward.ThreadPoolExecutor):  # runs the jobs in threads, keeps what a process pool got
        def __init__(self, max_workers, mp_context=None, initializer=None, initargs=()):
            seen["initializer"] = initializer
            super().__init__(max_workers)

        def submit(self, fn, *args, **kwargs):
            seen["job"] = fn
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(forward, "ProcessPoolExecutor", Recorder)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"{i}.jpg"))
        synth_photo(i).save(paths[-1])
    assert len(list(decoded_stream(paths, backbone=tiny, image=ImageConfig(size=224), workers=2))) == 2
    modules = {seen["initializer"].__module__, seen["job"].func.__module__}  # type: ignore[attr-defined]
    code = f"import importlib, sys\nfor m in {sorted(modules)!r}: importlib.import_module(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "False", modules


def test_decoding_in_threads_equals_inline_and_restores_global_state(tiny, awkward_dir: Path) -> None:
    import warnings

    paths = sorted(str(p) for p in awkward_dir.iterdir() if p.name != "MANIFEST.tsv")
    before = (Image.MAX_IMAGE_PIXELS, list(warnings.filters), warnings.showwarning)
    image = ImageConfig(size=112)
    threaded = {r.path: r for r in decoded_stream(paths, backbone=tiny, image=image, workers=0)}
    inline = {r.path: r for r in decoded_stream(paths, backbone=tiny, image=image, workers=0, threads=False)}
    assert (Image.MAX_IMAGE_PIXELS, list(warnings.filters), warnings.showwarning) == before
    assert sorted(threaded) == sorted(inline) == paths
    for p in paths:
        a, b = threaded[p], inline[p]
        assert type(a) is type(b), p
        if isinstance(a, Skipped):
            assert a.reason == b.reason, p  # type: ignore[union-attr]
        else:
            assert torch.equal(a.pixels[0], b.pixels[0]) and a.sha256 == b.sha256, p  # type: ignore[union-attr]


def test_both_paths_give_a_file_the_same_input_shape(tiny, tmp_path: Path) -> None:
    # 1020x1125 at 224: Pillow decodes it at 1/4 DCT scale, 255x282 (sides rounded up), whose
    # aspect once snapped to 196 wide where the full picture's gives 210
    p = tmp_path / "odd.jpg"
    synth_photo(4, (1020, 1125)).save(p, quality=90)
    pillow, device = _stream([str(p)], tiny, None)[str(p)], _stream([str(p)], tiny, CPU)[str(p)]
    query, _ = images.preprocess(p, size=224, patch_size=14, mean=tiny.mean, std=tiny.std)
    want = images.target_size(1020, 1125, size=224, patch_size=14)
    assert tuple(pillow.pixels[0].shape[1:]) == tuple(device.pixels[0].shape[1:]) == query.shape[1:] == want[::-1]


def test_orientation_stored_as_text_is_ignored_on_both_paths(tiny, tmp_path: Path) -> None:
    import struct

    # an EXIF block whose orientation tag is ASCII "6" instead of a SHORT: exif_transpose leaves
    # such a picture as it is (Pillow itself refuses to write one, hence the bytes by hand)
    ifd = struct.pack("<H", 1) + struct.pack("<HHI", 0x0112, 2, 2) + b"6\0\0\0" + struct.pack("<I", 0)
    exif = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd
    p = tmp_path / "text_orientation.jpg"
    synth_photo(6, (300, 200)).save(p, quality=90, exif=exif)
    pillow, device = _stream([str(p)], tiny, None)[str(p)], _stream([str(p)], tiny, CPU)[str(p)]
    assert pillow.original_wh == device.original_wh == (300, 200)
    assert pillow.pixels[0].shape == device.pixels[0].shape


@pytest.mark.subprocess
def test_an_interrupted_stream_stops_its_decoder_processes_at_once(tiny, tmp_path: Path) -> None:
    import multiprocessing

    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.jpg"))
        synth_photo(i).save(paths[-1])
    gen = decoded_stream(paths, backbone=tiny, image=ImageConfig(size=112), workers=2, threads=False)
    next(gen)
    assert multiprocessing.active_children()
    try:
        gen.throw(KeyboardInterrupt)  # as Ctrl-C lands while the caller waits for a file
    except KeyboardInterrupt as e:
        held = e  # the traceback keeps the generator frames alive, as an exception being handled does
        assert held.__traceback__ is not None
        assert multiprocessing.active_children() == []
