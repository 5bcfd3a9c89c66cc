"""The one helper that seeds the global random state (Python, NumPy, torch on every device).

Local, scoped draws (the PU split, the loader's shuffle, sampling noise, a classifier's init inside
`torch.random.fork_rng`) use their own seeded generators instead and never touch the global state.
"""
from accelerate.utils import set_seed


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices) from one number."""
    set_seed(seed)
