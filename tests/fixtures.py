"""Tiny datasets written in the exact on-disk formats torchvision reads, for tests that run offline.

Each `write_*` function writes a class-balanced train and test split with `per_class` and
`test_per_class` images of every class, in a seeded random order with seeded random pixels, under
`root` (the folder passed as --data_dir), and returns (train_labels, test_labels) as int64 arrays
in file order. The files are what the real downloads unpack to, so the same loaders read both:

    root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    root/stl10_binary/{train_X,train_y,test_X,test_y}.bin
    root/celeba/{img_align_celeba/*.jpg, list_*.txt, identity_CelebA.txt}
"""
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from configs.sd import SD_CONFIG

# A UNet small enough to train a step in milliseconds on CPU (sample_size is set per use).
TINY_UNET = dict(
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)

NUM_CLASSES = 10                 # MNIST, CIFAR10 and STL10
MNIST_SIZE = 28
CIFAR_SIZE = 32
STL_SIZE = 96
CELEBA_WIDTH, CELEBA_HEIGHT = 178, 218   # aligned CelebA images
# IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
CIFAR_BATCHES = 5
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
CELEBA_MALE = CELEBA_ATTRIBUTES.index("Male")
CELEBA_PARTITIONS = {"train": 0, "valid": 1, "test": 2}
# A port nothing listens on: every download through this proxy is refused at once, so tests of
# "dataset missing and no network" behave the same on machines with and without network.
DEAD_PROXY = "http://127.0.0.1:9"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def offline_env(env):
    """A copy of the environment `env` in which downloads fail at once (for subprocesses)."""
    env = {k: v for k, v in env.items() if k.lower() != "no_proxy"}
    env.update({name: DEAD_PROXY for name in PROXY_VARIABLES})
    return env


def cpu_env(env):
    """A copy of the environment `env` in which CUDA shows no device (for subprocesses).

    A script started with it takes its CPU path (fp32, Accelerator(cpu=True), CPU sampling) on any
    machine, as the tests that compare weights bit for bit need; torchrun passes it on to its workers.
    """
    return {**env, "CUDA_VISIBLE_DEVICES": ""}


def balanced_labels(rng, num_classes, per_class):
    """`per_class` labels of each class in a random order (so classes are not in contiguous runs)."""
    return rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.int64)


def random_pixels(rng, shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_idx(path, array, magic):
    """An uncompressed IDX file: big-endian magic, big-endian uint32 sizes, then the raw bytes."""
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    Path(path).write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root, per_class, test_per_class, seed=0):
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for prefix, n in (("train", per_class), ("t10k", test_per_class)):
        labels = balanced_labels(rng, NUM_CLASSES, n)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", random_pixels(rng, (len(labels), MNIST_SIZE, MNIST_SIZE)),
                  IDX_IMAGES_MAGIC)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, IDX_LABELS_MAGIC)
        out.append(labels)
    return tuple(out)


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root, per_class, test_per_class, seed=0):
    """CIFAR10's python batches: dicts with "data" uint8 [N, 3072] (R, G, B planes) and "labels".

    The real files are Python 2 pickles whose str keys load as str with encoding="latin1", which is
    how torchvision reads them; so the keys here are str as well.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train = balanced_labels(rng, NUM_CLASSES, per_class)
    for i, part in enumerate(np.array_split(np.arange(len(train)), CIFAR_BATCHES), start=1):
        write_pickle(folder / f"data_batch_{i}", {
            "batch_label": f"training batch {i} of {CIFAR_BATCHES}",
            "labels": train[part].tolist(),
            "data": random_pixels(rng, (len(part), 3 * CIFAR_SIZE * CIFAR_SIZE)),
            "filenames": [f"train_{j}.png" for j in part],
        })
    test = balanced_labels(rng, NUM_CLASSES, test_per_class)
    write_pickle(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1", "labels": test.tolist(),
        "data": random_pixels(rng, (len(test), 3 * CIFAR_SIZE * CIFAR_SIZE)),
        "filenames": [f"test_{j}.png" for j in range(len(test))],
    })
    write_pickle(folder / "batches.meta", {"label_names": CIFAR_CLASSES, "num_cases_per_batch": len(train) // CIFAR_BATCHES,
                                           "num_vis": 3 * CIFAR_SIZE * CIFAR_SIZE})
    return train, test


def write_stl10(root, per_class, test_per_class, seed=0):
    """STL10's binaries: *_X.bin uint8 images [N, 3, 96, 96] stored column-major (each channel
    transposed, as torchvision undoes on load), *_y.bin uint8 labels counted from 1."""
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for split, n in (("train", per_class), ("test", test_per_class)):
        labels = balanced_labels(rng, NUM_CLASSES, n)
        images = random_pixels(rng, (len(labels), 3, STL_SIZE, STL_SIZE))
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        out.append(labels)
    (folder / "class_names.txt").write_text("\n".join(
        ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    return tuple(out)


def write_table(path, rows, header=None):
    """A CelebA list file: optional count line and column-name line, then space-separated rows."""
    lines = [] if header is None else [str(len(rows)), " ".join(header)]
    lines += [" ".join(str(v) for v in row) for row in rows]
    Path(path).write_text("\n".join(lines) + "\n")


def write_celeba(root, per_class, test_per_class, seed=0, valid_per_class=2):
    """Aligned CelebA: 178 x 218 JPEGs and the five list files torchvision's CelebA parses.

    Classes are the values of attribute 20 ("Male"); attributes are stored as -1 / 1 like the real
    file. A few "valid" images are written too, so a loader that ignored the partition would show.
    """
    folder = Path(root) / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, labels = [], {}
    for split, n in (("train", per_class), ("valid", valid_per_class), ("test", test_per_class)):
        labels[split] = balanced_labels(rng, 2, n)
        rows += [(CELEBA_PARTITIONS[split], male) for male in labels[split]]
    names = [f"{i:06d}.jpg" for i in range(1, len(rows) + 1)]
    attrs = []
    for name, (_, male) in zip(names, rows):
        Image.fromarray(random_pixels(rng, (CELEBA_HEIGHT, CELEBA_WIDTH, 3))).save(images / name)
        values = rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))
        values[CELEBA_MALE] = 1 if male else -1
        attrs.append([name, *values])
    write_table(folder / "list_eval_partition.txt", [(name, part) for name, (part, _) in zip(names, rows)])
    write_table(folder / "identity_CelebA.txt", [(name, i % 7 + 1) for i, name in enumerate(names)])
    write_table(folder / "list_attr_celeba.txt", attrs, header=CELEBA_ATTRIBUTES)
    write_table(folder / "list_bbox_celeba.txt", [(name, 95, 71, 226, 313) for name in names],
                header=["image_id", "x_1", "y_1", "width", "height"])
    write_table(folder / "list_landmarks_align_celeba.txt", [(name, 69, 109, 106, 113, 77, 142, 73, 152, 108, 154)
                                                           for name in names],
                header=["lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                        "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y"])
    return labels["train"], labels["test"]


WRITERS = {"MNIST": write_mnist, "CIFAR10": write_cifar10, "STL10": write_stl10, "CelebA": write_celeba}


def write_coloured_sd_folder(root, n_normal, n_sensitive_in_u, n_s, seed=0):
    """main-sd.py's two folders (0_unlabeled/, 1_positive/) of flat-coloured 24 px PNGs with pixel noise:
    normal images bluish, sensitive ones reddish, so that any image features tell them apart."""
    rng = np.random.default_rng(seed)

    def save(folder, name, colour):
        pixels = np.clip(np.array(colour) + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / folder / name)
    for i in range(n_normal):
        save(SD_CONFIG.unlabeled_dir, f"man_{i:03d}.png", (40, 60, 200))
    for i in range(n_sensitive_in_u):
        save(SD_CONFIG.unlabeled_dir, f"brad_pitt_{i:03d}.png", (200, 50, 40))
    for i in range(n_s):
        save(SD_CONFIG.positive_dir, f"brad_pitt_{i:03d}.png", (200, 50, 40))
    return root


def write_image_folder(root, n_normal, n_sensitive_in_u, n_s, n_test=0, n_test_sensitive=0, mode="RGB",
                       sizes=((20, 24), (12, 12)), seed=0):
    """An image folder in the layout of utils/folders.py: unlabeled/ (normal and hidden sensitive images),
    sensitive/, and test/normal/, test/sensitive/ where their counts are not 0. Normal images are dark
    noise, sensitive ones bright, so that any judge tells them apart; in `mode` (L or RGB), of two sizes
    in turn (`sizes`, width x height), every third one a JPEG, every other one in a nested folder."""
    rng = np.random.default_rng(seed)
    root = Path(root)

    def save(part, n, sensitive, stem):
        for i in range(n):
            width, height = sizes[i % len(sizes)]
            low = 155 if sensitive else 0
            pixels = rng.integers(low, low + 100, (height, width, 3), dtype=np.uint8)
            folder = root / part / ("nested/deeper" if i % 2 else "")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).convert(mode).save(folder / f"{stem}_{i:03d}.{'jpg' if i % 3 == 2 else 'png'}")
    save("unlabeled", n_normal, False, "normal")
    save("unlabeled", n_sensitive_in_u, True, "sensitive")
    save("sensitive", n_s, True, "sensitive")
    save("test/normal", n_test, False, "normal")
    save("test/sensitive", n_test_sensitive, True, "sensitive")
    return root


def tree(root):
    """Every file under `root` with its size and modification time: what 'nothing written' compares."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def refused(script, argv, capsys, watch):
    """Run `script` on `argv`: assert exit 2, one error line and no change under `watch`; return the line."""
    import pytest

    from tiny_models import load_script
    from utils.errors import USAGE_EXIT_CODE
    module = load_script(script)
    before = tree(watch)
    with pytest.raises(SystemExit) as stopped:
        module.main(module.parse_args([str(a) for a in argv]))
    assert stopped.value.code == USAGE_EXIT_CODE
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    assert tree(watch) == before
    return errors[0]

