"""The pixel-space experiment that main.py and main-ft.py share: data, loop, pipeline, grid."""
import torch
from torch.utils.tensorboard import SummaryWriter

from utils.data import load_pu_data
from utils.evaluation import check_eval_args, evaluate_run
from utils.run import save_pipeline, seed_everything, write_file_atomically
from utils.sampling import GRID_SAMPLES, generate, save_grid
from utils.training import make_accelerator, train


def sampling_dtype(accelerator):
    """Half precision for sampling where training used it on CUDA; fp32 elsewhere."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision) \
        if accelerator.device.type == "cuda" else None


def run_pixel_experiment(run, unet, noise_scheduler, pipeline_cls):
    """Train `unet` on `run`'s PU data, save a `pipeline_cls` checkpoint and an 8 x 8 sample grid,
    then (unless --num_eval_samples 0) evaluate it into outputs/results/{key}.json (utils.evaluation).

    Everything that can fail on bad input (data, split sizes) is checked before the first write.
    Returns (accelerator, unwrapped unet, data) for evaluation.
    """
    args, config = run.args, run.config
    check_eval_args(args.classifier_weights, args.inception_weights)
    accelerator = make_accelerator(args.mixed_precision, args.allow_tf32)
    with accelerator.main_process_first():   # one process downloads; the others then read its files
        data = load_pu_data(config, args.data_dir, args.seed)
    if accelerator.is_main_process:
        print(f"{run.key}: U = {data.split.n_u_normal} normal + {data.split.n_u_sensitive} sensitive, "
              f"S = {data.split.n_s}, test = {len(data.test)}; {sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M "
              f"parameters on {accelerator.device} ({accelerator.mixed_precision})")
    seed_everything(args.seed)
    writer = SummaryWriter(run.log_dir) if accelerator.is_main_process else None
    unet = train(accelerator, unet, noise_scheduler, data.train, algorithm=args.algorithm, beta=run.beta,
                 correction=args.pu_correction, config=config, seed=args.seed, writer=writer,
                 channels_last=args.channels_last, checkpointing=run.checkpointing, split=data.split,
                 data_on_device=args.data_on_device, compile_model=args.compile)
    if accelerator.is_main_process:
        record = run.record(split=dict(n_u_normal=data.split.n_u_normal, n_u_sensitive=data.split.n_u_sensitive,
                                       n_s=data.split.n_s, n_test=len(data.test)),
                            device=str(accelerator.device), mixed_precision=accelerator.mixed_precision)
        path = save_pipeline(run, pipeline_cls(unet=unet, scheduler=noise_scheduler), record)
        dtype = sampling_dtype(accelerator)
        images = generate(unet, noise_scheduler, sampler=config.sampler, num_samples=GRID_SAMPLES,
                          num_inference_steps=config.num_inference_steps, batch_size=GRID_SAMPLES,
                          seed=args.seed, dtype=dtype, desc="sample grid")
        grid = write_file_atomically(run.image_dir / f"{run.key}.png", lambda p: save_grid(images, p))
        print(f"saved {path} and {grid}")
        writer.close()
        if args.num_eval_samples != 0:
            evaluate_run(run, unet, noise_scheduler, data.test, accelerator.device, dtype)
    return accelerator, unet, data
