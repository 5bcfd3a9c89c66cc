"""Fashion-MNIST: its configs split tiny idx fixtures correctly, read from a folder of .gz files offline."""
import gzip
import multiprocessing
import shutil

import numpy as np
import pytest

from configs import get_config, with_overrides
from fixtures import write_mnist
from utils.data import gunzip_placed, load_dataset, load_pu_data
from utils.errors import UsageError

PER_CLASS, TEST_PER_CLASS = 10, 4
COUNTS = dict(n_u_normal=30, n_u_sensitive=5, n_s=5, n_test=6)


@pytest.fixture(scope="module")
def gz_folder(tmp_path_factory):
    """Tiny Fashion-MNIST-format data as .gz idx files only, the way the Debian package ships them."""
    root = tmp_path_factory.mktemp("fashion")
    write_mnist(root, PER_CLASS, TEST_PER_CLASS)
    raw = root / "FashionMNIST" / "raw"
    shutil.move(root / "MNIST" / "raw", raw)
    for path in list(raw.iterdir()):
        with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        path.unlink()
    return root


@pytest.mark.parametrize("name", ["FashionMNIST_clothes", "FashionMNIST_accessories", "FashionMNIST_clothes_cpu",
                                  "FashionMNIST_accessories_cpu", "FashionMNIST_clothes_cpu32"])
def test_fashion_mnist_split_counts_classes_and_disjointness(name, gz_folder, offline):
    config = with_overrides(get_config(name), **COUNTS)
    data = load_pu_data(config, str(gz_folder), seed=0)
    _, targets = load_dataset(config, str(gz_folder), train=True)
    split, labels = data.split, data.split.labels
    assert len(set(split.indices.tolist())) == len(split.indices) == sum(COUNTS.values()) - COUNTS["n_test"]
    is_normal = np.isin(targets[split.indices], config.normal_classes)
    assert labels.sum() == COUNTS["n_s"] and not is_normal[labels == 1].any()            # S: sensitive only
    assert is_normal.sum() == COUNTS["n_u_normal"]                                        # U: 30 normal + 5 sensitive
    size = config.image_size                                                              # 32, or 16 on CPU
    assert data.train.images.shape == (len(split.indices), 3, size, size)
    assert data.train.images.min() >= -1 and data.train.images.max() <= 1
    assert len(data.test) == COUNTS["n_test"]


def test_clothes_and_accessories_are_each_others_reverse():
    clothes, accessories = get_config("FashionMNIST_clothes"), get_config("FashionMNIST_accessories")
    assert sorted(clothes.normal_classes + accessories.normal_classes) == list(range(10))
    assert clothes.normal_classes == (0, 1, 2, 3, 4, 6)
    assert (clothes.n_u_normal, clothes.n_u_sensitive, clothes.n_s) == (25_000, 2_500, 2_500)   # MNIST's


@pytest.mark.parametrize("paper, cpu", [("FashionMNIST_clothes", "FashionMNIST_clothes_cpu"),
                                        ("FashionMNIST_accessories", "FashionMNIST_accessories_cpu"),
                                        ("FashionMNIST_clothes", "FashionMNIST_clothes_cpu32")])
def test_cpu_companions_keep_the_data_and_proportions(paper, cpu):
    paper, cpu = get_config(paper), get_config(cpu)
    assert (cpu.dataset, cpu.normal_classes, cpu.n_test) == (paper.dataset, paper.normal_classes, paper.n_test)
    assert cpu.n_u_normal == 10 * cpu.n_u_sensitive == 10 * cpu.n_s        # the paper's 10 : 1 : 1
    assert cpu.true_prior == paper.true_prior
    assert cpu.classifier_size == cpu.image_size                            # judged at the size it draws


def gunzip_when_released(barrier, raw):
    barrier.wait()
    gunzip_placed(raw)


def test_runs_started_together_decompress_the_placed_files_without_colliding(tmp_path):
    """A parallel seed sweep on a fresh folder: every process decompresses the same .gz files at once."""
    processes = 4
    write_mnist(tmp_path, per_class=1_000, test_per_class=4)      # an 8 MB image file: long enough to overlap
    raw = tmp_path / "MNIST" / "raw"
    originals = {path.name: path.read_bytes() for path in raw.iterdir()}
    for name, data in originals.items():
        (raw / name).unlink()
        (raw / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    workers = [context.Process(target=gunzip_when_released, args=(barrier, str(raw))) for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.exitcode for worker in workers] == [0] * processes
    assert {name: (raw / name).read_bytes() for name in originals} == originals
    assert sorted(path.name for path in raw.iterdir()) == sorted([*originals, *(f"{n}.gz" for n in originals)])


@pytest.mark.parametrize("damage", [lambda data: b"garbage" + data, lambda data: data[:len(data) // 2]],
                         ids=["not gzip", "cut short"])
def test_a_damaged_placed_gz_file_is_called_damaged_not_missing(damage, gz_folder, tmp_path, offline):
    root = tmp_path / "data"
    shutil.copytree(gz_folder, root, ignore=lambda folder, names: [n for n in names if n.endswith("-ubyte")])
    images = root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"    # the .gz alone, as placed
    images.write_bytes(damage(images.read_bytes()))
    with pytest.raises(UsageError, match="are damaged") as refused:
        load_dataset(get_config("FashionMNIST_clothes_cpu"), str(root), train=True)
    assert "not in" not in str(refused.value)
    assert not (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()   # nothing half-written
