import numpy as np
import pytest
import torch
from PIL import Image

from gandeploy.data import BatchIndices, FolderDataset, batches, bundled_mnist, fit_images, load_data
from gandeploy.errors import DataError
from gandeploy.recipe import DataConfig


def test_bundled_mnist_is_the_documented_set():
    images, labels = bundled_mnist()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def test_mnist_at_other_resolutions_and_channels():
    data = load_data(DataConfig(resolution=32, channels=3, limit=10, conditional=True))
    assert data.images.shape == (10, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.num_classes == 10 and data.labels.shape == (10,)


def _write_folder(root):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls / "nested").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8)).save(root / cls / "nested" / "g.JPG")
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dogs" / "notes.txt").write_text("ignored")


def test_image_folder_loader(tmp_path, capfd):
    _write_folder(tmp_path)
    ds = FolderDataset(str(tmp_path), 16, 3, conditional=True)
    assert len(ds) == 9 and ds.classes == ["cats", "dogs"]
    items = [ds[i] for i in range(len(ds))]
    assert all(img.shape == (3, 16, 16) and img.dtype == torch.uint8 for img, _ in items)
    assert [int(label) for _, label in items] == [0] * 5 + [1] * 4
    err = capfd.readouterr().err
    assert err.count("skipping unreadable image") == 1 and "broken.jpg" in err
    # the broken file's slot is filled by the next readable image
    broken = [p.name for p in ds.files].index("broken.jpg")
    assert torch.equal(items[broken][0], ds.load(broken + 1))
    grey = FolderDataset(str(tmp_path), 8, 1)
    assert grey.load(0).shape == (1, 8, 8)


def test_folder_batches_through_the_data_loader(tmp_path):
    _write_folder(tmp_path)
    data = load_data(DataConfig(source="folder", path=str(tmp_path), resolution=16, channels=3, conditional=True,
                                workers=0))
    images, labels = next(batches(data, 4, seed=0, start=0, device=torch.device("cpu"), workers=0))
    assert images.shape == (4, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert labels.shape == (4,) and set(labels.tolist()) <= {0, 1}


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="image folder .* not found"):
        FolderDataset(str(tmp_path / "nope"), 16, 3)
    with pytest.raises(DataError, match="no .jpg/.png images"):
        FolderDataset(str(tmp_path), 16, 3)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "top.png")
    with pytest.raises(DataError, match="one sub-folder per class"):
        FolderDataset(str(tmp_path), 16, 3, conditional=True)


def test_npz_source(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.full((5, 20, 20, 3), 200, np.uint8), labels=np.arange(5))
    data = load_data(DataConfig(source="npz", path=str(path), resolution=28, channels=1, conditional=True))
    assert data.images.shape == (5, 1, 28, 28) and int(data.images.float().mean().round()) == 200
    assert data.num_classes == 5
    np.savez(path, images=np.zeros((5, 20, 20), np.float32))
    with pytest.raises(DataError, match="must be uint8"):
        load_data(DataConfig(source="npz", path=str(path)))


def test_fit_images_centre_crops_then_resizes():
    img = torch.zeros(1, 1, 10, 20, dtype=torch.uint8)
    img[..., :, 5:15] = 255  # the centre square is white, the sides black
    out = fit_images(img, 5, 1)
    assert out.shape == (1, 1, 5, 5) and int(out.min()) == 255


def test_batch_indices_are_a_function_of_the_iteration():
    full = BatchIndices(10, 4, seed=3)
    stream = torch.cat([full.batch(i) for i in range(5)])  # 20 items = two epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    resumed = BatchIndices(10, 4, seed=3, start=3)
    assert next(iter(resumed)) == full.batch(3).tolist()
    ranks = [BatchIndices(10, 4, seed=3, rank=r, world=2).batch(2) for r in range(2)]
    assert torch.equal(torch.cat(ranks), full.batch(2))
