"""Reference numbers for Ember's schedules and samplers (crates/ember/src/sample/) from k-diffusion and diffusers.

Writes tests/fixtures/kdiffusion_extra.safetensors (float32 except where noted):
  schedule/alphas_cumprod            LDM's alphas_cumprod (f64 linspace of sqrt betas, squared, cumprod, stored f32)
  schedule/get_sigmas_{N}            k-diffusion CompVisDenoiser.get_sigmas(N) for N in 10, 20, 50
  schedule/karras_{N}                get_sigmas_karras(N, sigma_min, sigma_max, rho=7) with the model's sigmas, N in 10, 20, 29
  schedule/sigma_to_t_in, _out       CompVisDenoiser.sigma_to_t on assorted sigmas (unquantized)
  toy/{sampler}/out, noise_NN        k-diffusion samplers the shared kdiffusion_toy.safetensors lacks
                                     (dpm_2_ancestral, dpmpp_2s_ancestral) on D(x, s) = x / (1 + s^2), its Karras-20
                                     sigmas and its "start"; noise_NN is the ancestral noise drawn at the NN-th draw
  cvd/start, cvd/sigmas              img2img-like run through CompVisDenoiser: sigmas = get_sigmas(20)[5:],
                                     start = x0 + noise * sigmas[0] (x0, noise from schedulers_sd15_toy.safetensors)
  cvd/{sampler}/out, noise_NN        every k-sampler InvokeAI offers, over the eps-model
                                     eps(x_in, t) = x_in * (0.5 + t / 2000) (t fractional, from sigma_to_t)
  plms_tail/start, plms_tail/after_step_NN
                                     LDM PLMS restarted on a schedule tail (img2img): 20 steps, the last 15 run
                                     (timesteps 701..1), via diffusers' PNDMScheduler (skip_prk_steps) fed the
                                     tail as it orders a full run ([t0, t1, t1, t2, ...]); toy eps = sqrt(1 - abar(t)) * x.
Run from the repository root:  /work/torchvenv/bin/python tools/oracle/make_sampler_reference.py
Deterministic (fixed seeds, CPU).
"""
import os

import numpy as np
import torch
from diffusers import PNDMScheduler
from k_diffusion import external, sampling
from safetensors.torch import load_file, save_file

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "testdata", "oracle"))


def ldm_alphas_cumprod():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas.numpy(), axis=0), dtype=torch.float32)


class ToyEps(torch.nn.Module):
    def apply_model(self, x, t):
        return x * (0.5 + t.reshape(-1, 1, 1, 1) / 2000.0)


class RecordingNoise:
    """A k-diffusion noise_sampler that draws from a fixed generator and keeps what it drew."""

    def __init__(self, like, seed):
        self.like = like
        self.g = torch.Generator("cpu").manual_seed(seed)
        self.drawn = []

    def __call__(self, sigma, sigma_next):
        n = torch.randn(self.like.shape, generator=self.g, dtype=self.like.dtype)
        self.drawn.append(n.clone())
        return n


def run(out, prefix, fn, model, x, sigmas, ancestral, seed):
    kwargs = {"disable": True}
    rec = None
    if ancestral:
        rec = RecordingNoise(x, seed)
        kwargs["noise_sampler"] = rec
    res = fn(model, x.clone(), sigmas, **kwargs)
    out[f"{prefix}/out"] = res
    if rec is not None:
        for i, n in enumerate(rec.drawn):
            out[f"{prefix}/noise_{i:02d}"] = n


def main():
    torch.set_grad_enabled(False)
    out = {}
    ac = ldm_alphas_cumprod()
    out["schedule/alphas_cumprod"] = ac
    cvd = external.CompVisDenoiser(type("M", (), {"alphas_cumprod": ac})(), quantize=False)
    cvd.inner_model = ToyEps()
    for n in (10, 20, 50):
        out[f"schedule/get_sigmas_{n}"] = cvd.get_sigmas(n)
    for n in (10, 20, 29):
        out[f"schedule/karras_{n}"] = sampling.get_sigmas_karras(
            n, cvd.sigmas[0].item(), cvd.sigmas[-1].item(), rho=7.0)
    probe = torch.tensor([0.0292, 0.03, 0.1, 0.5, 1.0, 1.2345, 3.3, 7.0, 14.0, 14.6146, 0.029167535], dtype=torch.float32)
    out["schedule/sigma_to_t_in"] = probe
    out["schedule/sigma_to_t_out"] = cvd.sigma_to_t(probe)

    # Toy denoiser of the shared kdiffusion_toy.safetensors.
    shared = load_file(os.path.join(SHARED, "kdiffusion_toy.safetensors"))
    toy = lambda x, s: x / (1 + s.reshape(-1, 1, 1, 1) ** 2)
    ksig = shared["karras20_sigmas"]
    for i, name in enumerate(["dpm_2_ancestral", "dpmpp_2s_ancestral"]):
        run(out, f"toy/{name}", getattr(sampling, f"sample_{name}"), toy, shared["start"], ksig, True, 100 + i)

    # Through CompVisDenoiser, on an img2img tail of the model schedule.
    toy2 = load_file(os.path.join(SHARED, "schedulers_sd15_toy.safetensors"))
    x0, noise = toy2["toy/x0"], toy2["toy/noise"]
    sig = cvd.get_sigmas(20)[5:]
    start = x0 + noise * sig[0]
    out["cvd/start"], out["cvd/sigmas"] = start, sig
    names = ["lms", "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2m", "dpmpp_2s_ancestral"]
    for i, name in enumerate(names):
        run(out, f"cvd/{name}", getattr(sampling, f"sample_{name}"), cvd, start, sig, "ancestral" in name, 200 + i)

    # PLMS restarted on the tail of a 20-step schedule: the last 15 timesteps (701 .. 1).
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(20)
    tail = [int(t) for t in sched.timesteps]
    tail = sorted(set(tail), reverse=True)[-15:]
    # diffusers' PLMS order is [t0, t1, t1, t2, ...]: the second call evaluates the Euler prediction at t1.
    sched.timesteps = torch.tensor(tail[:2] + tail[1:], dtype=torch.long)
    sched.ets, sched.counter, sched.cur_sample = [], 0, None
    dac = sched.alphas_cumprod
    x = sched.add_noise(x0, noise, torch.tensor([tail[0]]))
    out["plms_tail/start"] = x
    out["plms_tail/timesteps"] = torch.tensor(tail, dtype=torch.float32)
    for i, t in enumerate(sched.timesteps):
        eps = (1 - dac[int(t)]).sqrt() * x
        x = sched.step(eps, t, x).prev_sample
        out[f"plms_tail/after_step_{i:02d}"] = x
    out["plms_tail/alphas_cumprod"] = dac.float()

    path = os.path.join(ROOT, "tests", "fixtures", "kdiffusion_extra.safetensors")
    save_file({k: v.float().contiguous() for k, v in out.items()}, path)
    print(f"wrote {len(out)} tensors to {path}")


if __name__ == "__main__":
    main()
