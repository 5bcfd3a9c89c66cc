"""Loading pretrained models from a hub id or a local folder, with errors that say what is missing.

main-ft.py starts from a DDPM pipeline (UNet2DModel + its noise schedule), main-sd.py and
make-sd-data.py from a Stable Diffusion pipeline, the SD evaluation from a CLIP model. A local
folder is checked for the parts we need before anything loads; a hub id that cannot be fetched
(no network, no cache) becomes a UsageError naming the source, so scripts fail before they write.
"""
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from utils.errors import UsageError, first_line
from utils.files import PIPELINE_INDEX

# diffusers finds a pipeline part in its subfolder or, for older repos such as google/ddpm-*, at the root.
CONFIG_FILES = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                "scheduler": "scheduler_config.json", "tokenizer": "tokenizer_config.json"}
DDPM_PARTS = ("unet", "scheduler")
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_source(source, what, parts=(), index=None):
    """Return `source` if it is an existing folder holding `parts` (or a plausible hub id).

    Raises UsageError for a missing folder, a folder without one of `parts` (each looked for in
    its subfolder and at the root) or without the `index` file.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        if index and not (folder / index).is_file():
            raise UsageError(f"{folder} has no {index}; {what} must be a folder written by save_pretrained")
        for part in parts:
            name = CONFIG_FILES[part]
            if not ((folder / part / name).is_file() or (folder / name).is_file()):
                raise UsageError(f"{folder} has no {part} ({part}/{name}); {what} must be a saved diffusers "
                                 f"pipeline with {', '.join(p + '/' for p in parts)}")
        return str(folder)
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise UsageError(f"{what} {source!r} is neither a folder nor a hub id; pass an existing folder "
                         f"or an id such as org/name")
    return source


def _load(what, source, load):
    try:
        return load()
    except (OSError, ValueError) as e:   # what transformers and diffusers raise for missing or bad files
        raise UsageError(f"could not load {what} {source!r} ({first_line(e)}); pass a local folder "
                         f"or run once with network access so the hub copy is cached")


def training_noise_scheduler(scheduler, source):
    """A DDPMScheduler on `scheduler`'s own schedule (betas, T, clipping): the class whose add_noise
    the training loop uses. The loss regresses the added noise, so only epsilon-prediction models fit."""
    from diffusers import DDPMScheduler
    check_predicts_noise(scheduler.config, source)
    return DDPMScheduler.from_config(scheduler.config)


def check_predicts_noise(scheduler_config, source):
    """UsageError unless the model of `scheduler_config` predicts the noise, as the losses need."""
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise UsageError(f"{source} predicts {prediction!r}, but the PU losses need a model that predicts the "
                         f"noise (prediction_type 'epsilon'), such as CompVis/stable-diffusion-v1-4")


def load_pretrained_ddpm(source):
    """(UNet2DModel, DDPMScheduler) of a DDPM pipeline whose configs load_ddpm_configs has checked (its
    type and noise prediction), the scheduler keeping the pretrained schedule."""
    from diffusers import DDPMScheduler, DiffusionPipeline
    source = check_source(source, "--pretrained_model", DDPM_PARTS, PIPELINE_INDEX)
    pipe = _load("the pretrained pipeline", source, lambda: DiffusionPipeline.from_pretrained(source))
    return pipe.unet, DDPMScheduler.from_config(pipe.scheduler.config)


def unet_image_shape(unet_config):
    """(channels, size) of the images a UNet2DModel config takes; size is None unless they are square."""
    size = unet_config["sample_size"]
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    return unet_config["in_channels"], size


def load_ddpm_configs(source, what="--pretrained_model", for_training=True):
    """(UNet config, scheduler config) of a DDPM pipeline: two small JSON files, so that main-ft.py can
    check the model's image size and settle the run before any weights load. `for_training` also
    refuses a model that does not predict the noise (the losses need it; sampling does not)."""
    unet, scheduler, _ = load_pipeline_configs(source, what)
    if for_training:
        check_predicts_noise(scheduler, source)
    return unet, scheduler


def load_pipeline_configs(source, what="--pretrained_model"):
    """(UNet config, scheduler config, pipeline index) of a pixel-space pipeline with a UNet2DModel."""
    from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DModel
    source = check_source(source, what, DDPM_PARTS, PIPELINE_INDEX)
    index = _load("the pretrained pipeline", source, lambda: DiffusionPipeline.load_config(source))
    if (index.get("unet") or [None])[-1] != UNet2DModel.__name__:
        raise UsageError(f"{source} is a {index.get('_class_name')} without a UNet2DModel; {what} must "
                         f"be a DDPM pipeline such as google/ddpm-cifar10-32")

    def read(cls, part):
        # Older hub repos such as google/ddpm-* keep a part's config at the root; diffusers looks there
        # itself for a local folder, not for a hub id.
        try:
            return cls.load_config(source, subfolder=part)
        except OSError:
            return cls.load_config(source)
    unet = _load("the pretrained UNet's config", source, lambda: read(UNet2DModel, "unet"))
    scheduler = _load("the pretrained scheduler's config", source, lambda: read(DDPMScheduler, "scheduler"))
    return unet, scheduler, index


def load_stable_diffusion(source):
    """A StableDiffusionPipeline in fp32 on the CPU, without the safety checker (never trained or saved)."""
    from diffusers import StableDiffusionPipeline
    source = check_source(source, "--pretrained_model", SD_PARTS, PIPELINE_INDEX)
    return _load("the Stable Diffusion pipeline", source,
                 lambda: StableDiffusionPipeline.from_pretrained(source, safety_checker=None,
                                                                 requires_safety_checker=False))


def load_clip(source):
    """(CLIPModel, CLIPProcessor) in eval mode on the CPU, for zero-shot scoring."""
    from transformers import CLIPModel, CLIPProcessor
    source = check_source(source, "--clip_model")
    model = _load("the CLIP model", source, lambda: CLIPModel.from_pretrained(source))
    processor = _load("the CLIP processor", source, lambda: CLIPProcessor.from_pretrained(source))
    return model.eval().requires_grad_(False), processor
