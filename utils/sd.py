"""Stable Diffusion's PU data: the folder check, the (image, caption, y) dataset, and model input.

The data folder holds two subfolders: unlabeled images (y = 0, captioned with the normal prompt, "a
photo of a middle aged man" by default) and labeled sensitive ones (y = 1, captioned with the
sensitive prompt, "a photo of Brad Pitt"), named unlabeled/ and sensitive/ as every image folder
(utils/folders.py), or 0_unlabeled/ and 1_positive/ as make-sd-data.py writes them (`sd_data_dirs`
tells which). Any image Pillow reads counts, in nested folders too. `validate_sd_folder` checks it
before any model loads; `SDImageDataset` serves (pixels in [-1, 1], caption ids, y) with the image work
done per item, so DataLoader workers can share it; `make_sd_model_input` is the `to_model_input` of
the shared training loop: VAE latents and CLIP text embeddings, no gradients.
"""
import copy
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T

from configs.sd import POSITIVE_DIR, UNLABELED_DIR
from utils import folders
from utils.errors import UsageError
from utils.folders import list_images

UNLABELED, POSITIVE = 0, 1


def expected_tree(root, config):
    made = (f"make-sd-data.py writes this tree ({folders.UNLABELED}/ and {folders.SENSITIVE}/ are read alike)"
            if config.unlabeled_dir == UNLABELED_DIR else
            f"make-sd-data.py writes the same as {UNLABELED_DIR}/ and {POSITIVE_DIR}/")
    return (f"expected {root}/{config.unlabeled_dir}/*.png (y = 0, \"{config.unlabeled_caption}\") and "
            f"{root}/{config.positive_dir}/*.png (y = 1, \"{config.positive_caption}\"); {made}")


def sd_data_dirs(root):
    """{unlabeled_dir, positive_dir}: the subfolders of the SD data folder `root` that hold U and S:
    unlabeled/ and sensitive/ where unlabeled/ exists, else make-sd-data.py's 0_unlabeled/ and 1_positive/."""
    root = Path(root)
    if not (root / folders.UNLABELED).is_dir():
        return dict(unlabeled_dir=UNLABELED_DIR, positive_dir=POSITIVE_DIR)
    if (root / UNLABELED_DIR).is_dir():
        raise UsageError(f"{root} holds both {folders.UNLABELED}/ and {UNLABELED_DIR}/; keep one layout: "
                         f"{folders.UNLABELED}/ with {folders.SENSITIVE}/, or {UNLABELED_DIR}/ with {POSITIVE_DIR}/")
    return dict(unlabeled_dir=folders.UNLABELED, positive_dir=folders.SENSITIVE)


def validate_sd_folder(root, config):
    """{y: [image paths]} for the two subfolders of `root`, each non-empty and fully readable.

    Anything else (a missing folder, an empty one, an image PIL cannot read) is a UsageError that
    names the problem and shows the expected tree. Prints the counts.
    """
    root = Path(root)
    files = {}
    for y, name in ((UNLABELED, config.unlabeled_dir), (POSITIVE, config.positive_dir)):
        folder = root / name
        if not folder.is_dir():
            raise UsageError(f"{folder} is missing; {expected_tree(root, config)}")
        files[y] = list_images(folder)
        if not files[y]:
            raise UsageError(f"{folder} holds no images (any format Pillow reads, nested folders allowed); "
                             f"{expected_tree(root, config)}")
        for path in files[y]:
            try:
                with Image.open(path) as image:
                    image.verify()
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise UsageError(f"{path} is not a readable image ({e}); replace or delete it "
                                 f"(make-sd-data.py regenerates missing files)")
    print(f"{root}: {len(files[UNLABELED])} unlabeled in {config.unlabeled_dir}/ (y = 0, \"{config.unlabeled_caption}\"), "
          f"{len(files[POSITIVE])} sensitive in {config.positive_dir}/ (y = 1, \"{config.positive_caption}\")")
    return files


def check_resolution(pipe, resolution):
    """The UNet halves the latent once per level below the top, so `resolution` must divide evenly."""
    factor = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if resolution % factor:
        raise UsageError(f"--resolution {resolution} is not a multiple of {factor}, which this pipeline needs")


def sd_image_transform(resolution):
    """Resize the short side to `resolution`, crop the centre, scale to [-1, 1]."""
    return T.Compose([T.Resize(resolution, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                      T.CenterCrop(resolution), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])


def tokenize(tokenizer, caption):
    """Caption ids padded and truncated to the tokenizer's length (77 for CLIP) as a LongTensor."""
    return tokenizer(caption, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids[0]


class SDImageDataset(Dataset):
    """(pixels [3, R, R] in [-1, 1], caption ids [77], y) for every image in the validated folder.

    Each subfolder has one caption, so captions are tokenized once here; images load per item.
    """

    def __init__(self, files, config, tokenizer):
        self.paths = [p for y in (UNLABELED, POSITIVE) for p in files[y]]
        self.labels = [y for y in (UNLABELED, POSITIVE) for _ in files[y]]
        self.caption_ids = {UNLABELED: tokenize(tokenizer, config.unlabeled_caption),
                            POSITIVE: tokenize(tokenizer, config.positive_caption)}
        self.transform = sd_image_transform(config.resolution)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as image:
            pixels = self.transform(image.convert("RGB"))
        y = self.labels[i]
        return pixels, self.caption_ids[y], y


def frozen_copy(module, device, dtype):
    """A copy of `module` on `device` in `dtype`, in eval mode, without gradients.

    A copy, so the fp32 original stays intact for saving: an fp16 round trip would change its weights.
    """
    return copy.deepcopy(module).to(device, dtype).eval().requires_grad_(False)


def make_sd_model_input(vae, text_encoder):
    """The training loop's `to_model_input` for Stable Diffusion: (latents, text embeddings, y).

    Latents are the VAE posterior sample times `vae.config.scaling_factor`; embeddings are the text
    encoder's last hidden state. Both frozen models run without gradients in their own dtype (fp16
    on CUDA); the outputs are fp32, so the UNet's fp32 weights see fp32 inputs outside autocast.
    """
    scale = vae.config.scaling_factor

    @torch.no_grad()
    def to_model_input(batch):
        pixels, caption_ids, y = batch
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.sample() * scale
        embeddings = text_encoder(caption_ids)[0]
        return latents.float(), embeddings.float(), y

    return to_model_input
