"""Tiny pretrained-model folders built offline with save_pretrained, and a loader for the scripts.

Each builder writes a folder that the loaders in models/pretrained.py read exactly as they read a
hub snapshot: a DDPM pipeline (google/ddpm-cifar10-32's layout and schedule), a Stable Diffusion
pipeline (CompVis/stable-diffusion-v1-4's parts and scheduler) and a CLIP model with its processor.
The CLIP tokenizer is built from a vocab.json and merges.txt written here: one token per letter
(plus its end-of-word form), so every caption tokenizes to distinct ids without any download.
"""
import json
import string

import torch

TINY_SEED = 0
TEXT_DIM = 32                   # hidden size of the tiny CLIP text encoder = UNet cross-attention dim
START, END = "<|startoftext|>", "<|endoftext|>"


def _tiny_text_config(vocab_size, bos_id, eos_id):
    return dict(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos_id, eos_token_id=eos_id,
                pad_token_id=eos_id, projection_dim=16)


def write_clip_tokenizer(folder):
    """A CLIPTokenizer (model_max_length 77) from a letters-only vocab.json and merges.txt in `folder`."""
    from transformers import CLIPTokenizer
    folder.mkdir(parents=True, exist_ok=True)
    letters = string.ascii_lowercase
    vocab = [START, END, *letters, *(c + "</w>" for c in letters), "-", "-</w>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    return tokenizer


def save_tiny_ddpm(folder, sample_size=32, channels=3):
    """A DDPMPipeline with a 2-level UNet2DModel taking `channels`-channel images and google/ddpm-cifar10-32's
    noise schedule."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(TINY_SEED)
    unet = UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              clip_sample=True, variance_type="fixed_large")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def tiny_sd_architecture(latent_size, vocab_size, bos_id, eos_id):
    """{unet, vae, text_encoder}: the keyword arguments of a tiny Stable Diffusion's parts, SD v1's
    layout (a cross-attention UNet, a VAE with a scale factor of 2, a CLIP text encoder)."""
    return dict(
        unet=dict(sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=TEXT_DIM, attention_head_dim=4,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
                 sample_size=2 * latent_size, down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2),
        text_encoder=_tiny_text_config(vocab_size, bos_id, eos_id))


def save_tiny_stable_diffusion(folder, latent_size=8):
    """A StableDiffusionPipeline of tiny parts (tiny_sd_architecture); its native image size is
    2 * latent_size pixels. The scheduler is SD v1-4's PNDM with scaled-linear betas.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    tokenizer = write_clip_tokenizer(folder / "tokenizer_files")
    parts = tiny_sd_architecture(latent_size, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    torch.manual_seed(TINY_SEED)
    unet = UNet2DConditionModel(**parts["unet"])
    vae = AutoencoderKL(**parts["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**parts["text_encoder"]))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipeline")
    return folder / "pipeline"


def save_tiny_clip(folder, image_size=32):
    """A CLIPModel and CLIPProcessor (letters-only tokenizer, `image_size` px images)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
    tokenizer = write_clip_tokenizer(folder / "tokenizer_files")
    torch.manual_seed(TINY_SEED)
    text = _tiny_text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    vision = dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, projection_dim=16)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    images = CLIPImageProcessor(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    model.save_pretrained(folder / "clip")
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder / "clip")
    return folder / "clip"


def load_script(filename):
    """A top-level script (e.g. main-sd.py, whose name is no module name) imported as a module.

    Tests call its `main(parse_args([...]))`, the code path of `python <filename> ...`, without the
    cost of a fresh interpreter per run.
    """
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / filename
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
