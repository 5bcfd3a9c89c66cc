"""The objectives of DESIGN section 2 pinned against numbers worked out by hand, and the per-sample
denoising error checked against a direct computation on a tiny UNet.

Hand arithmetic used below (e = exp(1)):
    exp(-1) = 0.36787944117144233
    l_S(1)  = -ln(1 - 0.36787944117144233 + 1e-6) = -ln(0.63212155882855767) = 0.45867356341162635
    l_S'(L) = -exp(-L) / (1 - exp(-L) + 1e-6);  l_S'(1) = -0.36787944 / 0.63212156 = -0.58197578619718870
    l_S(50) = -ln(1 - 1.9e-22 + 1e-6) = -ln(1.000001) = -9.999995000003331e-07
"""
import pytest
import torch
from diffusers import DDPMScheduler

from losses import bounded_sensitive_loss, denoising_error, get_objective, pu, pu_risks, supervised, unsupervised

L_S_1 = 0.45867356341162635
DL_S_1 = -0.58197578619718870
L_S_50 = -9.999995000003331e-07
TIGHT = dict(rel=1e-12, abs=1e-15)


def tensors(L, y):
    return torch.tensor(L, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)


# Batch A: B = 4, one labeled sensitive sample (L = 1); U holds L = 2, 4, 3. n_S = 1, n_U = 3.
BATCH_A = ([2.0, 4.0, 1.0, 3.0], [0, 0, 1, 0])
# Batch N: no sensitive sample; n_S = max(1, 0) = 1, n_U = 4.
BATCH_N = ([1.0, 2.0, 3.0, 4.0], [0, 0, 0, 0])
# Batch R: the sensitive errors are large, so R_N < 0. n_S = 2, n_U = 2.
BATCH_R = ([1.0, 1.0, 50.0, 50.0], [0, 0, 1, 1])


def test_bounded_sensitive_loss_values():
    L = torch.tensor([1.0, 50.0], dtype=torch.float64)
    assert bounded_sensitive_loss(L).tolist() == pytest.approx([L_S_1, L_S_50], **TIGHT)


def test_batch_with_a_sensitive_sample():
    L, y = tensors(*BATCH_A)
    # Unsupervised: (2 + 4 + 3) / 4 = 2.25; the S sample contributes 0.
    assert unsupervised(L, y).item() == pytest.approx(2.25, **TIGHT)
    # Supervised: (2 + 4 + 3 + l_S(1)) / 4 = 9.45867356341162635 / 4
    assert supervised(L, y).item() == pytest.approx(2.3646683908529066, **TIGHT)
    # PU, beta = 0.1: R_S = 0.1 / 1 * l_S(1) = 0.045867356341162635
    #                 R_N = (2 + 4 + 3) / 3 - 0.1 * 1 / 1 = 3 - 0.1 = 2.9
    r_s, r_n = pu_risks(L, y, 0.1)
    assert r_s.item() == pytest.approx(0.045867356341162635, **TIGHT)
    assert r_n.item() == pytest.approx(2.9, **TIGHT)
    # R_N > 0, so both corrections give R_S + R_N = 2.945867356341163.
    assert pu(L, y, 0.1, "abs").item() == pytest.approx(2.9458673563411626, **TIGHT)
    assert pu(L, y, 0.1, "nn").item() == pytest.approx(2.9458673563411626, **TIGHT)


def test_batch_without_sensitive_samples():
    L, y = tensors(*BATCH_N)
    # Every objective reduces to the mean error (1 + 2 + 3 + 4) / 4 = 2.5; R_S = 0.1 / 1 * 0 = 0.
    assert unsupervised(L, y).item() == pytest.approx(2.5, **TIGHT)
    assert supervised(L, y).item() == pytest.approx(2.5, **TIGHT)
    r_s, r_n = pu_risks(L, y, 0.1)
    assert (r_s.item(), r_n.item()) == (0.0, pytest.approx(2.5, **TIGHT))
    assert pu(L, y, 0.1).item() == pytest.approx(2.5, **TIGHT)


def test_beta_zero_is_the_mean_over_u():
    L, y = tensors(*BATCH_A)
    # R_S = 0 * l_S(1) = 0; R_N = (2 + 4 + 3) / 3 - 0 = 3: the mean over U (not over B, unlike
    # Unsupervised's 9 / 4).
    r_s, r_n = pu_risks(L, y, 0.0)
    assert (r_s.item(), r_n.item()) == (0.0, pytest.approx(3.0, **TIGHT))
    assert pu(L, y, 0.0).item() == pytest.approx(3.0, **TIGHT)


def test_corrections_when_r_n_is_negative():
    L, y = tensors(*BATCH_R)
    # R_N = (1 + 1) / 2 - 0.1 * (50 + 50) / 2 = 1 - 5 = -4
    # R_S = 0.1 / 2 * 2 * l_S(50) = 0.1 * -9.999995e-07 = -9.999995e-08
    r_s, r_n = pu_risks(L, y, 0.1)
    assert r_n.item() == pytest.approx(-4.0, **TIGHT)
    assert r_s.item() == pytest.approx(0.1 * L_S_50, **TIGHT)
    # abs: R_S + |R_N| = -9.999995e-08 + 4 = 3.99999990000005;  nn: -R_N = 4 (R_S dropped).
    assert pu(L, y, 0.1, "abs").item() == pytest.approx(3.99999990000005, **TIGHT)
    assert pu(L, y, 0.1, "nn").item() == pytest.approx(4.0, **TIGHT)


def test_l_near_zero_is_finite_and_free_of_cancellation():
    # l_S(1e-8) = -ln(1e-8 + 1e-6) = -ln(1.01e-6) = 6 ln 10 - ln 1.01 = 13.815510558 - 0.009950331 = 13.805560227.
    # In float32, 1 - exp(-1e-8) rounds to 0 and would give -ln(1e-6) = 13.8155; expm1 keeps the 1e-8.
    L = torch.tensor([1e-8], requires_grad=True)
    value = bounded_sensitive_loss(L)
    assert value.item() == pytest.approx(13.80556, abs=1e-4)
    # l_S'(1e-8) = -1 / (1e-8 + 1e-6) = -990099.0: large, but finite.
    value.backward()
    assert L.grad.item() == pytest.approx(-990099.0, rel=1e-4)
    y = torch.tensor([1.0, 0.0])
    for algorithm in ("Unsupervised", "Supervised", "PU"):
        loss = get_objective(algorithm, 0.1)(torch.tensor([1e-8, 1e-8]), y)
        assert torch.isfinite(loss), algorithm


def test_l_very_large_is_finite():
    # exp(-1e4) underflows to 0: l_S(1e4) = -ln(1 + 1e-6) ~ -1e-6 and its gradient is 0
    # (float32 rounds 1 + 1e-6 to 1 + 9.54e-7, hence the loose tolerance).
    L = torch.tensor([1e4, 1e4], requires_grad=True)
    y = torch.tensor([1.0, 0.0])
    assert bounded_sensitive_loss(L[:1]).item() == pytest.approx(-1e-6, rel=0.1)
    for algorithm in ("Unsupervised", "Supervised", "PU"):
        for correction in ("abs", "nn"):
            loss = get_objective(algorithm, 0.1, correction)(L, y)
            (grad,) = torch.autograd.grad(loss, L)
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (algorithm, correction)


def gradient(objective, L, y):
    L = L.clone().requires_grad_(True)
    objective(L, y).backward()
    return L.grad.tolist()


@pytest.mark.parametrize("correction", ["abs", "nn"])
def test_pu_gradient_directions_when_r_n_is_positive(correction):
    L, y = tensors(*BATCH_A)
    # d/dL_U = 1 / n_U = 1/3 > 0: descent lowers the error on unlabeled samples.
    # d/dL_S = beta / n_S * l_S'(1) - beta / n_S = 0.1 * -0.58197579 - 0.1 = -0.15819758 < 0:
    # descent raises the error on labeled sensitive samples.
    grad = gradient(lambda L, y: pu(L, y, 0.1, correction), L, y)
    assert grad == pytest.approx([1 / 3, 1 / 3, 0.1 * DL_S_1 - 0.1, 1 / 3], **TIGHT)


def test_pu_gradients_flip_when_r_n_is_negative():
    L, y = tensors(*BATCH_R)
    # abs: loss = R_S - R_N, so d/dL_U = -1/2 and d/dL_S = 0.1/2 * l_S'(50) + 0.1/2 = 0.05 (l_S'(50) ~ -2e-22).
    assert gradient(lambda L, y: pu(L, y, 0.1, "abs"), L, y) == pytest.approx([-0.5, -0.5, 0.05, 0.05], **TIGHT)
    # nn: loss = -R_N: the same directions, without R_S.
    assert gradient(lambda L, y: pu(L, y, 0.1, "nn"), L, y) == pytest.approx([-0.5, -0.5, 0.05, 0.05], **TIGHT)


def test_unsupervised_ignores_sensitive_samples():
    L, y = tensors(*BATCH_A)
    changed = L.clone()
    changed[2] = 1000.0     # the S sample
    assert unsupervised(changed, y).item() == unsupervised(L, y).item()
    assert gradient(unsupervised, L, y) == pytest.approx([0.25, 0.25, 0.0, 0.25], **TIGHT)


def test_supervised_pushes_sensitive_error_up():
    L, y = tensors(*BATCH_A)
    # d/dL_S = l_S'(1) / B = -0.58197579 / 4; d/dL_U = 1 / B.
    assert gradient(supervised, L, y) == pytest.approx([0.25, 0.25, DL_S_1 / 4, 0.25], **TIGHT)


def test_get_objective_binds_beta_and_rejects_unknown_names():
    L, y = tensors(*BATCH_A)
    assert get_objective("PU", 0.1)(L, y).item() == pytest.approx(2.9458673563411626, **TIGHT)
    assert get_objective("PU", 0.1, "nn")(L, y).item() == pytest.approx(2.9458673563411626, **TIGHT)
    assert get_objective("Supervised", 0.5)(L, y).item() == pytest.approx(2.3646683908529066, **TIGHT)
    assert get_objective("Unsupervised", 0.5)(L, y).item() == pytest.approx(2.25, **TIGHT)
    with pytest.raises(KeyError, match="Unsupervised"):
        get_objective("PUL", 0.1)
    with pytest.raises(ValueError, match="abs"):
        pu(L, y, 0.1, "relu")


# ---- the per-sample denoising error -------------------------------------------------------------

def fixed_inputs(batch=3, size=8):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    noise = torch.randn(batch, 3, size, size, generator=g)
    t = torch.tensor([0, 500, 999][:batch])
    return x0, t, noise


@torch.no_grad()
def test_denoising_error_is_a_per_sample_sum(tiny_unet):
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x0, t, noise = fixed_inputs()
    L = denoising_error(tiny_unet, scheduler, x0, t=t, noise=noise)
    assert L.shape == (3,) and L.dtype == torch.float32
    # By hand: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, L = sum over C, H, W of (eps_theta - eps)^2.
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    pred = tiny_unet(noisy, t).sample
    expected = ((pred - noise) ** 2).sum(dim=(1, 2, 3))
    torch.testing.assert_close(L, expected, rtol=1e-5, atol=1e-5)
    # A sum over 3 * 8 * 8 = 192 elements, so about 192 times the per-element mean.
    assert L.mean() > 10 * ((pred - noise) ** 2).mean()
    # Each sample's error depends only on that sample.
    torch.testing.assert_close(denoising_error(tiny_unet, scheduler, x0[1:2], t=t[1:2], noise=noise[1:2]), L[1:2],
                               rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_denoising_error_is_deterministic_given_t_and_noise(tiny_unet):
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x0, t, noise = fixed_inputs()
    first = denoising_error(tiny_unet, scheduler, x0, t=t, noise=noise)
    assert torch.equal(first, denoising_error(tiny_unet, scheduler, x0, t=t, noise=noise))
    assert not torch.equal(first, denoising_error(tiny_unet, scheduler, x0, t=t.flip(0), noise=noise))
    # Without t and noise it draws its own: two calls differ.
    torch.manual_seed(1)
    drawn = denoising_error(tiny_unet, scheduler, x0)
    assert drawn.shape == (3,) and not torch.equal(drawn, denoising_error(tiny_unet, scheduler, x0))
