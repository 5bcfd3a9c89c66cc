"""The classifiers that judge generated images: normal or sensitive, and which class.

- The sensitivity classifier (DESIGN section 4, task SENSITIVITY): one binary classifier per config,
  trained on the fully labeled train split of the dataset (label 1 = one of `config.normal_classes`,
  0 = sensitive). Its verdicts give the non-sensitive rate.
- The class classifier (task CLASSES): one per dataset and size, over all its classes (10; CelebA's
  two values of Male), never told which are sensitive. Its verdicts give each class's share of the
  samples and its penultimate features the quality measures (utils.metrics), so quality is not
  judged in features trained to separate normal from sensitive.

Both are trained at `config.classifier_size` and cached with their held-out accuracy on the test
split (all classes) under `checkpoints/classifiers/`. MNIST, Fashion-MNIST and
the digits get a small CNN trained from scratch; CIFAR10, STL10 and CelebA a torchvision ResNet-18
fine-tuned from ImageNet weights with random horizontal flips (each dataset's recipe: utils.data.DATASETS). Every classifier takes images in
[0, 1] at any size and resizes them itself, so generated samples and dataset images take one path.
"""
import pickle
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from utils.data import LabeledSubset, dataset_spec, image_transform, load_dataset
from utils.errors import UsageError, first_line
from utils.files import write_file_atomically

# One judge per config whatever the seed of the run it judges, so results over seeds stay comparable.
CLASSIFIER_SEED = 0
CLASSIFIER_DIR = Path("checkpoints") / "classifiers"
CACHE_FORMAT = 1                          # bump when the cached payload or the training recipe changes
CNN_WIDTHS = (32, 64, 64)                 # channels of the small CNN's three conv stages
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
UNIT_TO_SYMMETRIC = ((0.5,) * 3, (0.5,) * 3)   # [0, 1] -> [-1, 1] for the CNN
LOADER_WORKERS_CUDA = 8                   # image decoding keeps up with a GPU; on CPU the main process loads
PREDICT_BATCH = 256
FLIP_PROBABILITY = 0.5                    # recipe.flip: each training image is mirrored left-right with this chance
SENSITIVITY, CLASSES = "sensitivity", "classes"   # what a classifier judges (see the module docstring)
NAMES = {SENSITIVITY: "sensitivity classifier", CLASSES: "class classifier"}


class ImageClassifier(nn.Module):
    """`backbone` gives penultimate features [B, num_features]; `head` the logits: one [B] (> 0: normal)
    for the sensitivity classifier, [B, num_outputs] for the class classifier.

    Inputs are images in [0, 1], [B, 3, H, W] (or [B, 1, H, W], repeated to three channels) at any H, W:
    `prepare` resizes them to `input_size` and normalises them as the backbone expects.
    """

    def __init__(self, backbone, num_features, input_size, mean, std, num_outputs=1):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(num_features, num_outputs)
        self.num_features, self.input_size = num_features, input_size   # torchmetrics reads num_features
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def prepare(self, x):
        if x.shape[1] == 1:   # grayscale images (an image folder's): the backbones take three channels
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def features(self, x):
        return self.backbone(self.prepare(x.float()))

    def forward(self, x):
        return self.logits(self.features(x))

    def logits(self, features):
        logits = self.head(features)
        return logits.squeeze(-1) if self.head.out_features == 1 else logits

    def predict(self, x):
        """Bool [B] (normal) for the sensitivity classifier, class ids [B] for the class classifier."""
        return self.predict_from_features(self.features(x))

    def predict_from_features(self, features):
        logits = self.logits(features)
        return logits > 0 if logits.dim() == 1 else logits.argmax(-1)


def small_cnn(widths=CNN_WIDTHS):
    """Three conv-BN-ReLU stages, pooled to one feature vector of widths[-1] values."""
    layers, c_in = [], 3
    for i, c in enumerate(widths):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        layers.append(nn.MaxPool2d(2) if i < len(widths) - 1 else nn.AdaptiveAvgPool2d(1))
        c_in = c
    return nn.Sequential(*layers, nn.Flatten())


def load_imagenet_resnet18(weights_path):
    """ResNet-18 with ImageNet weights from `weights_path` or torchvision's download; None if neither works."""
    from torchvision.models import ResNet18_Weights, resnet18
    model = resnet18()
    try:
        if weights_path:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        else:
            state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as e:
        if weights_path:
            raise UsageError(f"--classifier_weights {weights_path} is not a torchvision ResNet-18 state dict "
                             f"({first_line(e)}); pass resnet18-f37072fd.pth or leave it out")
        print(f"note: ImageNet weights for the ResNet-18 classifier could not be downloaded "
              f"({first_line(e)}); training it from scratch instead, so it judges less well. "
              f"Pass --classifier_weights resnet18-f37072fd.pth to fine-tune as the paper does.")
        return None
    return model


def build_classifier(config, arch, init, weights_path=None, num_outputs=1):
    """A fresh classifier for `config` with `num_outputs` logits; init is scratch | imagenet.
    Returns (model, init actually used)."""
    if arch == "cnn":
        return ImageClassifier(small_cnn(), CNN_WIDTHS[-1], config.classifier_size, *UNIT_TO_SYMMETRIC,
                               num_outputs), "scratch"
    if arch == "resnet18":
        from torchvision.models import resnet18
        model = load_imagenet_resnet18(weights_path) if init == "imagenet" else None
        init = "imagenet" if model is not None else "scratch"
        model = model or resnet18()
        num_features = model.fc.in_features
        model.fc = nn.Identity()
        return ImageClassifier(model, num_features, config.classifier_size, IMAGENET_MEAN, IMAGENET_STD,
                               num_outputs), init
    raise KeyError(f"unknown classifier architecture {arch!r}")


def check_classifier_weights(path):
    """Validate `--classifier_weights` before anything is written."""
    if path and not Path(path).is_file():
        raise UsageError(f"--classifier_weights {path} is not a file; pass a torchvision ResNet-18 "
                         f"ImageNet state dict (resnet18-f37072fd.pth) or leave it out")


def num_outputs(config, task):
    """The logits a classifier for `task` has: one (normal or not), or one per class of the dataset."""
    return 1 if task == SENSITIVITY else len(dataset_spec(config.dataset).class_names)


def labeled_split(config, data_dir, train, task=SENSITIVITY):
    """The whole train or test split as (image in [0, 1] at the classifier size, label): 1 if normal
    else 0 for SENSITIVITY, the class id for CLASSES."""
    sized = replace(config, image_size=config.classifier_size)
    base, targets = load_dataset(sized, data_dir, train=train, transform=image_transform(sized, to_unit_range=True))
    labels = np.isin(targets, config.normal_classes) if task == SENSITIVITY else targets
    return LabeledSubset(base, np.arange(len(labels)), np.asarray(labels, dtype=np.int64))


def classifier_loader(dataset, batch_size, device, shuffle=False, seed=CLASSIFIER_SEED):
    """Batches of (image, label) for training or running a classifier; decoded by workers on CUDA."""
    workers = LOADER_WORKERS_CUDA if device.type == "cuda" else 0
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed), pin_memory=device.type == "cuda")


def autocast(device):
    """bf16 autocast for the ResNet on CUDA; full precision on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def accuracy(model, dataset, device, batch_size=PREDICT_BATCH):
    """Share of `dataset`'s (image, label) pairs that `model` labels correctly."""
    model.eval()
    correct = 0
    for x, y in tqdm(classifier_loader(dataset, batch_size, device), desc="classifier accuracy", leave=False):
        with autocast(device):
            correct += (model.predict(x.to(device)).long().cpu() == y).sum().item()
    return correct / len(dataset)


def train_classifier(model, dataset, recipe, device, seed=CLASSIFIER_SEED):
    """Train `model` with AdamW for `recipe.epochs` epochs on `dataset`: binary cross-entropy for one
    logit, cross-entropy over classes for several."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    flips = torch.Generator().manual_seed(seed)
    loader = classifier_loader(dataset, recipe.batch_size, device, shuffle=True, seed=seed)
    # Cosine decay to zero: the last epochs settle, so the cached judge does not hinge on the final step.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs * len(loader))
    bar = tqdm(total=recipe.epochs * len(loader), desc=f"training the {NAMES[task_of(model)]}")
    for epoch in range(recipe.epochs):
        for x, y in loader:
            if recipe.flip:
                flip = torch.rand(len(x), generator=flips) < FLIP_PROBABILITY
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            with autocast(device):
                logits = model(x.to(device)).float()
            y = y.to(device)
            loss = F.binary_cross_entropy_with_logits(logits, y.float()) if logits.dim() == 1 else \
                F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def task_of(model):
    return SENSITIVITY if model.head.out_features == 1 else CLASSES


def cache_path(output_dir, config_name, config, arch, init, seed, task=SENSITIVITY, data=None):
    """checkpoints/classifiers/{config}_{arch}-{init}_{size}px_seed{seed}.pt for the sensitivity
    classifier, {dataset}_classes_... for the class classifier, folder_{name}_... for an image folder's
    judge (`data`): everything that determines it."""
    owner = data.owner if data is not None else config_name if task == SENSITIVITY else f"{config.dataset}_{CLASSES}"
    name = f"{owner}_{arch}-{init}_{config.classifier_size}px_seed{seed}.pt"
    return Path(output_dir) / CLASSIFIER_DIR / name


def describe(config_name, config, recipe, init, seed, task=SENSITIVITY, data=None):
    """What a cached classifier must match to be reused (an image folder's judge: also its folder and files)."""
    labels = dict(config_name=config_name, normal_classes=list(config.normal_classes)) if task == SENSITIVITY \
        else dict(task=task, num_classes=num_outputs(config, task))
    source = data.source if data is not None else {}
    return dict(format=CACHE_FORMAT, dataset=config.dataset, **labels, classifier_size=config.classifier_size,
                seed=seed, init=init, recipe=asdict(recipe), **source)


def load_cached(path, expected, config, device, task):
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = payload["meta"]
    if {k: meta.get(k) for k in expected} != expected:
        print(f"note: {path} was trained with other settings; training a new one")
        return None
    model, _ = build_classifier(config, meta["recipe"]["arch"], "scratch", num_outputs=num_outputs(config, task))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), dict(meta, path=str(path))


def load_or_train_classifier(config_name, config, data_dir, output_dir, device, weights_path=None,
                             seed=CLASSIFIER_SEED, task=SENSITIVITY, data=None):
    """The cached `task` classifier for `config`, trained (with a progress bar) and cached on first use.

    Returns (model in eval mode on `device`, meta) where meta holds `test_accuracy`, the held-out
    accuracy on the whole test split, and what the classifier was trained with. A ResNet-18 is
    fine-tuned from ImageNet weights (`weights_path` or torchvision's download); where neither can
    be had it is trained from scratch, cached under its own name, and the run says so. `data` (an
    image folder's utils.folders.FolderJudgeData) replaces the dataset's train and test splits.
    """
    check_classifier_weights(weights_path)
    device = torch.device(device)
    recipe = dataset_spec(config.dataset).classifier
    inits = ["scratch"] if recipe.arch == "cnn" else ["imagenet"] if weights_path else ["imagenet", "scratch"]
    for init in inits:
        path = cache_path(output_dir, config_name, config, recipe.arch, init, seed, task, data)
        cached = load_cached(path, describe(config_name, config, recipe, init, seed, task, data), config, device, task)
        if cached is not None:
            if recipe.arch != "cnn" and init == "scratch":
                print(f"note: using {path}, a ResNet-18 trained from scratch (no ImageNet weights were at hand); "
                      f"pass --classifier_weights resnet18-f37072fd.pth for the paper's fine-tuned judge")
            return cached
    # Load the data first: a missing dataset is a UsageError before anything is written.
    if data is not None:
        train_set, test_set = data.splits(seed)
    else:
        train_set = labeled_split(config, data_dir, train=True, task=task)
        test_set = labeled_split(config, data_dir, train=False, task=task)
    started = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, init = build_classifier(config, recipe.arch, inits[0], weights_path, num_outputs(config, task))
        model = train_classifier(model, train_set, recipe, device, seed)
    meta = dict(describe(config_name, config, recipe, init, seed, task, data),
                test_accuracy=accuracy(model, test_set, device), n_train=len(train_set), n_test=len(test_set),
                train_seconds=round(time.time() - started, 1))
    path = cache_path(output_dir, config_name, config, recipe.arch, init, seed, task, data)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    write_file_atomically(path, lambda p: torch.save(dict(state_dict=state, meta=meta), p))
    owner = config_name if task == SENSITIVITY else config.dataset
    print(f"{NAMES[task]} for {owner}: test accuracy {meta['test_accuracy']:.4f} "
          f"({recipe.arch}, {init}, {meta['train_seconds']} s); saved {path}")
    return model, dict(meta, path=str(path))


@torch.no_grad()
def predict_normal(model, images, device, batch_size=PREDICT_BATCH):
    """Bool [N]: whether the sensitivity classifier `model` calls each image in [0, 1] (a CPU tensor
    [N, 3, H, W]) normal."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        with autocast(torch.device(device)):
            out.append(model.predict(images[start:start + batch_size].to(device)).cpu())
    return torch.cat(out)


@torch.no_grad()
def features_and_predictions(model, batches, device):
    """(penultimate features float32 [N, D], predictions [N]) of `model` over `batches` of images in [0, 1]."""
    model.eval()
    features, predictions = [], []
    for x in batches:
        with autocast(torch.device(device)):
            f = model.features(x.to(device))
            predictions.append(model.predict_from_features(f).cpu())
        features.append(f.float().cpu())
    return torch.cat(features), torch.cat(predictions)
