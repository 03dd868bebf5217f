import pytest
import torch

from xilsweep.data import CONFOUNDED_CLASS, ConfoundedMNIST08, Confounder, Split
from xilsweep.files import atomic_torch_save, read_checked


def test_08mnist_has_only_zeros_and_eights_with_one_hot_targets(data):
    # 1,945 bundled training 0/8 digits split 90/10, the full 1,954-digit 0-vs-8 test set
    assert len(data.train) + len(data.val) == 1945
    assert len(data.test) == len(data.test_dotted) == 1954
    for split in (data.train, data.val, data.test):
        assert split.targets.shape == (len(split), 2)
        assert torch.equal(split.targets.sum(1), torch.ones(len(split)))
        assert set(split.labels.unique().tolist()) == {0, 1}
        assert split.x.min() >= 0 and split.x.max() <= 1


def test_every_training_eight_is_dotted_and_no_zero_is(data):
    dotted = data.train.mask.flatten(1).any(1)
    eights = data.train.labels == CONFOUNDED_CLASS
    assert torch.equal(dotted, eights)


def test_validation_and_test_are_clean_by_default_but_dotted_test_is_not(data):
    assert not data.val.mask.any() and not data.test.mask.any()
    assert data.test_dotted.mask.flatten(1).any(1).all()
    # the dotted test set is the clean one plus dots, nothing else
    assert torch.equal(torch.where(data.test_dotted.mask, 0.0, data.test_dotted.x), data.test.x)


def test_masks_cover_exactly_the_dot_pixels():
    x = torch.zeros(50, 1, 28, 28)
    x[:, :, 8:20, 8:20] = torch.rand(50, 1, 12, 12) * 0.8 + 0.1  # a "digit" of ink in the middle
    labels = torch.ones(50, dtype=torch.long)
    conf = Confounder(n_dots=5, dot_size=2, intensity=1.0)
    dotted, mask = conf.apply(x, labels, torch.Generator().manual_seed(0))
    changed = dotted != x
    assert torch.equal(changed, mask)  # dots only where the mask is, mask only where dots are
    assert (dotted[mask] == 1.0).all()
    assert not (mask & (x > 0)).any()  # never on ink
    per_image = mask.flatten(1).sum(1)
    assert (per_image >= 4).all() and (per_image <= 20).all()


def test_corner_rule_puts_the_same_dots_in_every_image(data_root):
    d = ConfoundedMNIST08(root=str(data_root), confounder={"positions": "corners", "n_dots": 4, "dot_size": 2}).load()
    eights = d.train.mask[d.train.labels == 1]
    assert (eights == eights[0]).all()
    assert eights[0].sum() == 16 and eights[0, 0, 1, 1] and eights[0, 0, 25, 25]


def test_changed_setting_makes_a_new_cache_and_same_setting_reuses_it(data_root, data):
    again = ConfoundedMNIST08(root=str(data_root)).load()
    assert again.key == data.key and again.content_hash == data.content_hash
    other = ConfoundedMNIST08(root=str(data_root), confounder={"n_dots": 5})
    assert other.key != data.key
    assert (data.directory / "confounded_v1" / "train.pth").exists()
    assert (data.directory / "original" / "test.pth").exists()


def test_generation_is_deterministic(data_root, tmp_path):
    a = ConfoundedMNIST08(root=str(data_root), seed=3)
    payload_a, _ = a._generate()
    payload_b, _ = ConfoundedMNIST08(root=str(data_root), seed=3)._generate()
    assert torch.equal(payload_a["train"]["mask"], payload_b["train"]["mask"])
    assert torch.equal(payload_a["train"]["x"], payload_b["train"]["x"])


def test_n_train_takes_a_seeded_subset(data_root, data):
    sub = ConfoundedMNIST08(root=str(data_root), n_train=100).load()
    assert len(sub.train) == 100
    assert torch.equal(sub.train.x, ConfoundedMNIST08(root=str(data_root), n_train=100).load().train.x)


def test_split_survives_the_file_round_trip(data, tmp_path):
    path = tmp_path / "split.pth"
    atomic_torch_save(data.val.to_file(), path, meta={"v": 1})
    meta, payload = read_checked(path)
    back = Split.from_file(payload, 2)
    assert meta == {"v": 1}
    assert torch.equal(back.targets, data.val.targets) and torch.allclose(back.x, data.val.x)


def test_failed_download_is_one_clear_error(monkeypatch, tmp_path):
    import torchvision.datasets

    from xilsweep.data import load_mnist
    from xilsweep.errors import DataError

    class Offline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(
                "Error downloading train-images-idx3-ubyte.gz:\nTried https://example/, got:\n"
                "<urlopen error [Errno -2] Name or service not known>"
            )

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path / "full", train=True, download=True)
    message = str(err.value)
    assert "\n" not in message and "could not download MNIST" in message and "data=mnist08" in message


def test_missing_and_corrupt_mnist_files_are_reported(tmp_path, data_root):
    import shutil

    from xilsweep.data import load_mnist
    from xilsweep.errors import DataError

    with pytest.raises(DataError, match="missing MNIST file"):
        load_mnist(tmp_path, train=True)
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(data_root / "MNIST" / "raw", raw, ignore=shutil.ignore_patterns("*-ubyte"))
    archive = raw / "t10k-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:5000])
    with pytest.raises(DataError, match="corrupt MNIST file"):
        load_mnist(tmp_path, train=False)
    assert not (raw / "t10k-images-idx3-ubyte").exists()


def test_a_valid_gzip_that_is_not_mnist_is_named_with_its_reason(tmp_path, data_root):
    import gzip
    import shutil

    from xilsweep.data import load_mnist
    from xilsweep.errors import DataError

    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(data_root / "MNIST" / "raw", raw, ignore=shutil.ignore_patterns("*-ubyte"))
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not the MNIST labels"))
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, train=False)
    message = str(err.value)
    assert f"{raw / 't10k-labels-idx1-ubyte'} is not an MNIST IDX file (" in message
    assert "on the IDX header" in message or ": " in message.split("(", 1)[1]  # a reason, never empty
