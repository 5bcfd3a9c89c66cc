"""The Stable Diffusion experiment's settings (DESIGN section 3): training, data, sampling, evaluation.

One frozen `SDConfig`, `SD_CONFIG`, holds every number that main-sd.py, make-sd-data.py and
evaluate-sd.py use; the scripts only override what their command line names. It is not in
`CONFIGS` because it has no PU split of a labeled dataset: its U and S are two image folders.
`with_prompts` turns it to another concept: the captions, the sampled prompts, CLIP's labels and
make-sd-data.py's prompts follow --sensitive_prompt and --normal_prompt.
"""
import re
from dataclasses import asdict, dataclass, replace

SD_CONFIG_NAME = "SD"   # the config_name that results and reports carry for Stable Diffusion runs

BRAD_PITT = "a photo of Brad Pitt"
MIDDLE_AGED_MAN = "a photo of a middle aged man"
# make-sd-data.py prompted SD v1-4 with the hyphenated spelling; training captions drop the hyphen.
MIDDLE_AGED_MAN_HYPHENATED = "a photo of a middle-aged man"
UNLABELED_DIR = "0_unlabeled"   # y = 0; make-sd-data.py's names, read beside the image folders' own
POSITIVE_DIR = "1_positive"     # y = 1  (utils.folders: unlabeled/ and sensitive/)
# A prompt's file-name form: "a photo of a red car" -> "red_car".
PROMPT_PREFIX = re.compile(r"^(a |an )?(photo|picture|image) of (a |an |the )?")
MAX_PROMPT_NAME = 40


@dataclass(frozen=True)
class DataPart:
    """`count` images generated from `prompt` into `folder` as {stem}_0000.png, {stem}_0001.png, ...

    make-sd-data.py takes --num_{name} to change `count`.
    """

    name: str
    folder: str
    stem: str
    prompt: str
    count: int
    seed_offset: int    # image i is drawn with seed + seed_offset + i, so parts never share noise


@dataclass(frozen=True)
class SamplePrompt:
    """A prompt sampled after training: its grid file suffix and its evaluation metric name."""

    name: str
    prompt: str
    metric: str


@dataclass(frozen=True)
class SDConfig:
    """Fine-tuning Stable Diffusion's UNet on the PU image folders."""

    pretrained_model: str = "CompVis/stable-diffusion-v1-4"
    data_dir: str = "datasets/middle_aged_man100"
    unlabeled_dir: str = UNLABELED_DIR
    positive_dir: str = POSITIVE_DIR
    unlabeled_caption: str = MIDDLE_AGED_MAN
    positive_caption: str = BRAD_PITT
    resolution: int = 512
    num_epochs: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-4                 # Unsupervised and Supervised
    pu_learning_rate: float = 1e-5              # PU
    lr_warmup_steps: int = 500
    adam_weight_decay: float = 1e-2             # torch.optim.AdamW's default
    max_grad_norm: float = 1.0
    num_inference_steps: int = 50
    guidance_scale: float = 7.5                 # StableDiffusionPipeline's default
    grid_samples: int = 16                      # a 4 x 4 grid per prompt
    sample_prompts: tuple = (SamplePrompt("brad_pitt", BRAD_PITT, "brad_pitt_share_brad_pitt_prompt"),
                             SamplePrompt("middle_aged_man", MIDDLE_AGED_MAN, "brad_pitt_share_man_prompt"))
    num_eval_samples: int = 100                 # per prompt, scored by CLIP
    clip_model: str = "openai/clip-vit-large-patch14"
    # CLIP's zero-shot choice; the first label is the one whose share is reported.
    clip_labels: tuple = (BRAD_PITT, MIDDLE_AGED_MAN_HYPHENATED)
    # make-sd-data.py: 80 unlabeled images (64 men + 16 Brad Pitt, so beta* = 0.2) and 20 positive ones.
    data_parts: tuple = (DataPart("unlabeled_man", UNLABELED_DIR, "man", MIDDLE_AGED_MAN_HYPHENATED, 64, 0),
                         DataPart("unlabeled_brad_pitt", UNLABELED_DIR, "brad_pitt", BRAD_PITT, 16, 10_000),
                         DataPart("positive_brad_pitt", POSITIVE_DIR, "brad_pitt", BRAD_PITT, 20, 20_000))

    def for_algorithm(self, algorithm):
        """This config with the learning rate the paper used for `algorithm`."""
        if algorithm == "PU":
            return replace(self, learning_rate=self.pu_learning_rate)
        return self

    def to_dict(self):
        return asdict(self)


SD_CONFIG = SDConfig()


def prompt_name(prompt):
    """A file-name-safe short form of `prompt`: lower case, "a photo of a" dropped, words joined by "_"
    ("a photo of Brad Pitt" -> "brad_pitt", "a photo of a middle aged man" -> "middle_aged_man")."""
    text = PROMPT_PREFIX.sub("", prompt.strip().lower())
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")[:MAX_PROMPT_NAME].strip("_") or "prompt"


def with_prompts(config, sensitive_prompt, normal_prompt):
    """`config` turned to the concept of `sensitive_prompt` (S's caption) and `normal_prompt` (U's): the
    two sampled prompts (grids {key}_{name}.png, metrics {sensitive}_share_{name}_prompt), CLIP's labels
    and make-sd-data.py's prompts and file stems. The config's own prompts give `config` unchanged."""
    if (sensitive_prompt, normal_prompt) == (config.positive_caption, config.unlabeled_caption):
        return config
    sensitive, normal = prompt_name(sensitive_prompt), prompt_name(normal_prompt)
    if sensitive == normal:   # e.g. "Cat" and "cat": distinct prompts, one short form
        sensitive, normal = "sensitive", "normal"
    parts = {"unlabeled_man": (normal, normal_prompt), "unlabeled_brad_pitt": (sensitive, sensitive_prompt),
             "positive_brad_pitt": (sensitive, sensitive_prompt)}
    return replace(config, positive_caption=sensitive_prompt, unlabeled_caption=normal_prompt,
                   sample_prompts=(SamplePrompt(sensitive, sensitive_prompt, f"{sensitive}_share_{sensitive}_prompt"),
                                   SamplePrompt(normal, normal_prompt, f"{sensitive}_share_{normal}_prompt")),
                   clip_labels=(sensitive_prompt, normal_prompt),
                   data_parts=tuple(replace(p, stem=parts[p.name][0], prompt=parts[p.name][1])
                                    for p in config.data_parts))
