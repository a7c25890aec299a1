"""The training loop: alternating D and G steps, EMA of G, checkpoints that resume exactly, logs and sample grids.

Randomness: every D iteration `i` reseeds one generator from (seed, rank, i), and batch `i` of the data is a
pure function of (seed, i). A resumed run therefore draws the same latents and reads the same images as a run that
never stopped, with no generator state to carry across processes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed
from .augment import augment, parse_policy
from .artifacts import atomic_write_text, load_checkpoint, save_checkpoint, save_generator
from .formats.files import sweep
from .data import ImageData, batches, load_data
from .errors import TrainingDiverged, UserError, first_line
from .formats.images import save_grid, to_uint8
from .formats.paths import latest_export, latest_run  # noqa: F401  (re-exported)
from .formats.latents import latents
from .losses import LOSSES, gradient_penalty, instance_noise_std, r1_penalty
from .nets import build_discriminator, build_generator, dcgan_init
from .recipe import Recipe, load_recipe

CHECKPOINT_RE = re.compile(r"^step-(\d+)\.safetensors$")


def torch_device(name: str = "auto") -> torch.device:
    """A torch.device for `name` (auto, cpu, cuda[:N]): the runtime's resolution (`runtime.device.resolve_device`,
    which returns the name), plus what torch itself can use (a CPU build of torch sees no GPU)."""
    from .runtime.device import resolve_device as resolve

    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    device = resolve(name, what="--device")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: torch {torch.__version__} cannot use the GPU (CUDA build: "
                        f"{torch.version.cuda or 'none'}); install a CUDA build of torch, or use --device cpu")
    return torch.device(device)


def auto_amp(device: torch.device) -> str:
    """bf16 autocast where the hardware computes bf16 natively: CUDA GPUs that support it, and CPUs with
    AVX512-BF16 or AMX (measured 1.6x faster on the DCGAN MNIST step here); float32 elsewhere."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private but stable since torch 2.1
    native = [getattr(torch.cpu, name, lambda: False) for name in checks]
    try:
        return "bf16" if any(check() for check in native) else "none"
    except RuntimeError:
        return "none"


def generator_config(recipe: Recipe, num_classes: int) -> dict:
    """What config.json records: enough to rebuild the generator and to use its output."""
    m, d = recipe.model, recipe.data
    return {"family": m.name, "latent_dim": m.latent_dim, "resolution": d.resolution, "channels": d.channels,
            "width": m.g_width, "num_classes": num_classes, "embed_dim": m.embed_dim, "value_range": [-1.0, 1.0]}


# ---- EMA and standing statistics ----------------------------------------------------------------------------


def make_optimizer(recipe: Recipe, params, lr: float, device: torch.device) -> torch.optim.Optimizer:
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    if recipe.optim.name == "rmsprop":  # Arjovsky et al. 2017, Algorithm 1 (PyTorch's default alpha 0.99)
        return torch.optim.RMSprop(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, betas=recipe.optim.betas, **fused)


def learning_rate(recipe: Recipe, base: float, step: int) -> float:
    """The rate for generator step `step` (0-based): constant, or from optim.lr_decay_start on falling linearly to 0
    at train.steps (CycleGAN's constant-then-linear schedule)."""
    start, end = recipe.optim.lr_decay_start, recipe.train.steps
    if recipe.optim.lr_decay == "linear" and step >= start:
        return base * max(0.0, (end - step) / (end - start))
    return base


def ema_beta(recipe: Recipe, images_seen: int) -> float:
    """Karras et al. 2020 (StyleGAN2-ADA, arXiv:2006.06676): EMA half-life in images, ramped up early in training
    so that the average does not remember the random initialisation."""
    t = recipe.train
    half_life = t.ema_kimg * 1000
    if t.ema_rampup is not None:
        half_life = min(half_life, images_seen * t.ema_rampup)
    return 0.5 ** (t.batch_size / max(half_life, 1e-8))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


@torch.no_grad()
def standing_statistics(generator: nn.Module, batches_: int, batch_size: int, device: torch.device,
                        seed: int = 0) -> nn.Module:
    """A copy of `generator` in eval mode whose BatchNorm statistics are averaged over fresh samples of its own
    (Brock et al. 2019, BigGAN, sec. 3.1 and app. C). The EMA weights never produced the running statistics they
    inherit from G, so eval-mode samples would otherwise differ from what training showed."""
    model = copy.deepcopy(generator)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms and batches_:
        momentum = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes below
        model.train()
        rng = torch.Generator(device).manual_seed(seed)
        for _ in range(batches_):
            z = torch.randn(batch_size, model.latent_dim, generator=rng, device=device)
            labels = (torch.randint(0, model.num_classes, (batch_size,), generator=rng, device=device)
                      if model.num_classes else None)
            model(z, labels)
        for m, value in zip(norms, momentum):
            m.momentum = value
    return model.eval().requires_grad_(False)


# ---- the run ---------------------------------------------------------------------------------------------------


@dataclass
class Trainer:
    recipe: Recipe
    run_dir: Path
    device: torch.device
    world: distributed.World = field(default_factory=distributed.World)
    progress: bool = True

    def __post_init__(self):
        r, dev = self.recipe, self.device
        self.data: ImageData = load_data(r.data)
        if r.train.batch_size % self.world.size:
            raise UserError(f"train.batch_size: {r.train.batch_size} does not split over {self.world.size} "
                            f"processes; pick a multiple of {self.world.size}")
        self.gen_config = generator_config(r, self.data.num_classes)
        torch.manual_seed(r.train.seed)  # same initial weights in every process
        self.G = build_generator(self.gen_config)
        self.D = build_discriminator(r.model, r.data.resolution, r.data.channels, self.data.num_classes)
        if r.model.init == "dcgan":
            dcgan_init(self.G)
            dcgan_init(self.D)
        self.channels_last = r.model.name == "dcgan"  # measured faster on CPU (oneDNN) as on CUDA
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.G.to(dev, memory_format=fmt)
        self.D.to(dev, memory_format=fmt)
        self.ema = copy.deepcopy(self.G).eval().requires_grad_(False) if r.train.ema else None
        self.opt_g = make_optimizer(r, self.G.parameters(), r.optim.g_lr, dev)
        self.opt_d = make_optimizer(r, self.D.parameters(), r.optim.d_lr, dev)
        self.amp = auto_amp(dev) if r.train.amp == "auto" else r.train.amp
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp == "fp16")
        self.loss = LOSSES[r.loss.name]
        self.augment = parse_policy(r.loss.augment)
        self.step = 0
        self.elapsed = 0.0
        self.rng = torch.Generator(dev)
        self.best = {"fid": None, "step": None}  # FID-tracked training: the best evaluation so far
        self._fid = None  # (feature network, real features), loaded at the first evaluation

    # -- state ----------------------------------------------------------------------------------------------

    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"step": self.step, "elapsed": self.elapsed, "best": dict(self.best),
                "G": self.G.state_dict(), "D": self.D.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng}

    def load_state(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        rates = {"opt_g": self.recipe.optim.g_lr, "opt_d": self.recipe.optim.d_lr}
        for opt, key in ((self.opt_g, "opt_g"), (self.opt_d, "opt_d")):
            opt.load_state_dict(state[key])
            _match_layout(opt)
            for group in opt.param_groups:  # the recipe's rate wins: lowering it is how a diverged run goes on
                group["lr"] = rates[key]
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.best = dict(state.get("best") or {"fid": None, "step": None})

    def resume(self) -> Path | None:
        """Load the newest readable checkpoint; an unreadable one is reported and the one before it used. When
        there are checkpoints and none is readable, refuse: starting again would overwrite them."""
        found = list_checkpoints(self.run_dir)
        for path in reversed(found):
            try:
                state = load_checkpoint(path)
            except UserError as e:
                print(f"warning: {e}; trying the checkpoint before it", file=sys.stderr)
                continue
            try:
                self.load_state(state)
            except (KeyError, RuntimeError, ValueError) as e:
                first = first_line(e)
                raise UserError(f"{path} does not fit the recipe in {self.run_dir / 'recipe.yaml'} ({first}); if "
                                f"that file was damaged, restore it before --resume") from None
            return path
        if found:
            raise UserError(f"--resume {self.run_dir}: none of its {len(found)} checkpoint(s) can be read "
                            f"({', '.join(p.name for p in found)}); refusing to start again from step 0 over them: "
                            f"restore one, or move them away to start afresh")
        return None

    # -- one step ----------------------------------------------------------------------------------------------

    def _reseed(self, iteration: int) -> None:
        seq = np.random.SeedSequence([self.recipe.train.seed, self.world.rank, iteration])
        self.rng.manual_seed(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))

    def _noisy(self, x: torch.Tensor, std: float) -> torch.Tensor:
        if std == 0:
            return x
        return x + std * torch.randn(x.shape, generator=self.rng, device=x.device, dtype=x.dtype)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return augment(x, self.augment, self.rng) if self.augment else x

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, data_iter) -> torch.Tensor:
        """One G step after `d_steps` D steps; returns (d_loss, g_loss, D(x), D(G(z))) as a device tensor."""
        r, G, D = self.recipe, self.G, self.D
        noise = instance_noise_std(r.loss.instance_noise, r.loss.instance_noise_steps or r.train.steps, self.step)
        d_steps = r.optim.d_steps
        if r.optim.lr_decay != "none":
            for opt, base in ((self.opt_g, r.optim.g_lr), (self.opt_d, r.optim.d_lr)):
                for group in opt.param_groups:
                    group["lr"] = learning_rate(r, base, self.step)
        D.requires_grad_(True)
        for j in range(d_steps):
            self._reseed(self.step * d_steps + j)
            real, labels = next(data_iter)  # (b, c, h, w), labels (b,) or None
            if self.channels_last:
                real = real.contiguous(memory_format=torch.channels_last)
            z = torch.randn(real.shape[0], G.latent_dim, generator=self.rng, device=self.device)
            # With one D step, the fake batch is made once and reused by the G step (as the PyTorch DCGAN
            # tutorial does); with several, the G step draws a fresh one below.
            keep_graph = d_steps == 1
            with self._autocast(), torch.set_grad_enabled(keep_graph):
                fake = G(z, labels)
            # The penalties see what D sees: augmented images (as in DiffAugment and StyleGAN2-ADA), no noise.
            real_in, fake_in = self._augment(real), self._augment(fake.detach())
            with self._autocast():
                real_logits = D(self._noisy(real_in, noise), labels).float()
                fake_logits = D(self._noisy(fake_in, noise), labels).float()
                d_loss = self.loss.d(real_logits, fake_logits, r.loss.label_smoothing)
            if self.loss.gradient_penalty:
                alpha = torch.rand(real.shape[0], 1, 1, 1, generator=self.rng, device=self.device)
                d_loss = d_loss + r.loss.gp_weight * gradient_penalty(D, real_in, fake_in.float(), labels, alpha)
            if r.loss.r1_gamma:
                with self._autocast():
                    d_loss = d_loss + r.loss.r1_gamma / 2 * r1_penalty(D, real_in, labels)
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler.scale(d_loss).backward()
            distributed.average_gradients(D, self.world)
            self.scaler.step(self.opt_d)
            if self.loss.clip:
                with torch.no_grad():
                    for p in D.parameters():
                        p.clamp_(-r.loss.clip, r.loss.clip)

        D.requires_grad_(False)  # the G step needs gradients through D, not for it
        if not keep_graph:
            z = torch.randn(real.shape[0], G.latent_dim, generator=self.rng, device=self.device)
            with self._autocast():
                fake = G(z, labels)
        with self._autocast():
            g_loss = self.loss.g(D(self._noisy(self._augment(fake), noise), labels).float())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(g_loss).backward()
        distributed.average_gradients(G, self.world)
        self.scaler.step(self.opt_g)
        self.scaler.update()

        self.step += 1
        if self.ema is not None:
            ema_update(self.ema, G, ema_beta(r, self.step * r.train.batch_size))
        score = self.loss.score
        return torch.stack([d_loss.detach(), g_loss.detach(), score(real_logits.detach()).mean(),
                            score(fake_logits.detach()).mean()])

    # -- outputs -----------------------------------------------------------------------------------------------

    def export_generator(self) -> nn.Module:
        """The EMA weights with standing statistics (when EMA is on), written to the generator folder of the latest
        step (generator/, or generator-latest/ when FID tracking is on), with a grid."""
        t = self.recipe.train
        source = self.ema if self.ema is not None else self.G
        model = standing_statistics(source, t.standing_stats_batches, t.batch_size, self.device, t.seed)
        self.write_generator(model, latest_dir(self.run_dir, t))
        save_grid(sample_images(model, t.grid_size, seed=0), self.run_dir / "samples" / f"step-{self.step:07d}.png")
        return model

    def write_generator(self, model: nn.Module, folder: Path, **extra) -> None:
        save_generator(folder, model, {**self.gen_config, "run_name": self.recipe.name, "step": self.step,
                                       "amp": self.amp, **extra})  # amp: the precision it was trained in

    def evaluate(self, model: nn.Module) -> dict:
        """FID and KID of `model` (images 0..n-1 of seed 0) against the first n training images."""
        from .metrics import fid
        from .metrics.quality import kid

        n = self.recipe.train.eval_samples
        if self._fid is None:
            net = fid.load_feature_net(self.device if self.device.type == "cuda" else "cpu")
            real = self.data.images[:n].permute(0, 2, 3, 1).numpy()  # uint8 (n, h, w, c)
            self._fid = net, fid.real_features(real, net)
        net, real = self._fid
        features = net(sample_images(model, min(n, len(real)), seed=0))
        value = fid.frechet_distance(*fid.statistics(features), *fid.statistics(real))
        kid_mean, kid_std = kid(real, features)
        return {"step": self.step, "fid": value, "kid": kid_mean, "kid_std": kid_std, "eval_samples": len(features)}

    def checkpoint(self, log=None) -> None:
        t = self.recipe.train
        source = self.ema if self.ema is not None else self.G
        scores = None
        if t.eval_every and (self.step % t.eval_every == 0 or self.step == t.steps):
            model = standing_statistics(source, t.standing_stats_batches, t.batch_size, self.device, t.seed)
            scores = self.evaluate(model)
            if self.best["fid"] is None or scores["fid"] < self.best["fid"]:
                self.best = {"fid": scores["fid"], "step": self.step}
        folder = self.run_dir / "checkpoints"
        save_checkpoint(folder / f"step-{self.step:07d}.safetensors", self.state())
        for old in list_checkpoints(self.run_dir)[:-self.recipe.train.keep_checkpoints]:
            old.unlink(missing_ok=True)
        model = self.export_generator()
        if scores is not None:
            if log is not None:
                log.write(scores)
            if self.best["step"] == self.step:  # generator/ holds the best by FID (StudioGAN keeps best and last)
                self.write_generator(model, self.run_dir / "generator", fid=scores["fid"])

    # -- the loop ----------------------------------------------------------------------------------------------

    def fit(self) -> dict:
        r, t = self.recipe, self.recipe.train
        distributed.broadcast_parameters(self.G, self.world)
        distributed.broadcast_parameters(self.D, self.world)
        start = self.step
        data_iter = batches(self.data, t.batch_size, t.seed, start * r.optim.d_steps, self.device,
                            self.world.rank, self.world.size, r.data.workers)
        log = RunLog(self.run_dir, self.world.main, start)
        bar = _progress(t.steps, start, self.progress and self.world.main)
        window, window_start, tick = [], self.step, time.perf_counter()
        last = {}
        try:
            while self.step < t.steps:
                window.append(self.train_step(data_iter))
                bar.update(1)
                at_checkpoint = self.step % t.checkpoint_every == 0 or self.step == t.steps
                if self.step % t.log_every == 0 or at_checkpoint:
                    values = torch.stack(window).float().cpu()  # (steps in window, 4)
                    bad = (~torch.isfinite(values)).any(dim=1).nonzero()
                    if len(bad):
                        raise TrainingDiverged(self._diverged_message(window_start + int(bad[0]) + 1, values))
                    now = time.perf_counter()
                    self.elapsed += now - tick
                    d_loss, g_loss, d_real, d_fake = values.mean(0).tolist()
                    last = {"step": self.step, "d_loss": d_loss, "g_loss": g_loss, "d_real": d_real,
                            "d_fake": d_fake, "images_per_s": len(window) * t.batch_size * r.optim.d_steps
                            / max(now - tick, 1e-9), "elapsed_s": self.elapsed}
                    log.write(last)
                    bar.set_postfix(D=f"{d_loss:.3f}", G=f"{g_loss:.3f}", Dx=f"{d_real:.2f}", DGz=f"{d_fake:.2f}",
                                    img_s=f"{last['images_per_s']:.0f}")
                    window, window_start, tick = [], self.step, time.perf_counter()
                    if at_checkpoint and self.world.main:
                        self.checkpoint(log)
                        tick = time.perf_counter()
        finally:
            bar.close()
            log.close()
        distributed.assert_in_sync(self.G, self.world)
        return last

    def _diverged_message(self, step: int, values: torch.Tensor) -> str:
        kept = latest_checkpoint(self.run_dir)
        where = f"{kept} is kept" if kept else "no checkpoint was written yet"
        return (f"loss became non-finite at step {step} (last values D={values[-1, 0]:.4g}, G={values[-1, 1]:.4g}); "
                f"{where}. Lower optim.g_lr/optim.d_lr or try loss.name=wgan-gp, then resume with "
                f"--resume {self.run_dir}")


def _match_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state the memory format of its parameter (checkpoints store it contiguous): fused
    Adam pairs elements by storage order, so a channels_last weight needs channels_last moments."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                state[key] = torch.empty_like(param).copy_(value)


def sample_images(generator: nn.Module, n: int, seed: int = 0, labels=None, batch_size: int = 256) -> np.ndarray:
    """uint8 (n, h, w, c) from the counter-based latents of `seed`; conditional models default to label k % classes."""
    device = next(generator.parameters()).device
    if generator.num_classes and labels is None:
        labels = np.arange(n) % generator.num_classes
    out = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            z = torch.from_numpy(latents(seed, k, generator.latent_dim, start)).to(device)
            y = None if labels is None else torch.as_tensor(labels[start:start + k], dtype=torch.int64, device=device)
            out.append(to_uint8(generator(z, y).float().cpu().numpy()))
    return np.concatenate(out)


class RunLog:
    """log.jsonl (one JSON object per logging step) and TensorBoard events when tensorboard is installed."""

    def __init__(self, run_dir: Path, enabled: bool, start_step: int):
        self.enabled, self.path, self.tb = enabled, run_dir / "log.jsonl", None
        if not enabled:
            return
        if self.path.exists():  # a resumed run forgets what came after its checkpoint
            kept = []
            for line in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line half-written when the power went: dropped
                    continue
                if isinstance(record, dict) and isinstance(record.get("step", 0), int) and \
                        record.get("step", 0) <= start_step:
                    kept.append(line)
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step":
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                file=sys.stderr, mininterval=0.5)


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def latest_dir(run_dir: Path, t) -> Path:
    """Where the latest step's generator goes: generator/ itself, or generator-latest/ when generator/ keeps the
    best by FID."""
    return Path(run_dir) / ("generator-latest" if t.eval_every else "generator")


def generator_step(run_dir: Path, name: str = "generator") -> int | None:
    """The step <name>/config.json records; None when there is no readable one."""
    try:
        step = json.loads((Path(run_dir) / name / "config.json").read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


# ---- entry point ------------------------------------------------------------------------------------------------


def new_run_dir(root: Path, name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3, ... when that already holds a run: nothing is ever overwritten."""
    candidate, k = root / name, 1
    while candidate.exists() and any(candidate.iterdir()):
        k += 1
        candidate = root / f"{name}-{k}"
    return candidate


# What may differ between a run's recipe.yaml and a resumed run: schedules, rates and housekeeping, nothing that
# shapes the models, the data or the meaning of a step.
RESUMABLE_CHANGES = ("train.steps", "optim.g_lr", "optim.d_lr", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.eval_every",
                     "train.log_every", "train.grid_size", "data.workers")


def recipe_differences(a: dict, b: dict, prefix: str = ""):
    """(dotted key, value in a, value in b) for every leaf where two recipe dicts (Recipe.to_dict()) differ."""
    for key in a:
        if isinstance(a[key], dict):
            yield from recipe_differences(a[key], b[key], f"{prefix}{key}.")
        elif a[key] != b[key]:
            yield f"{prefix}{key}", a[key], b[key]


def prepare_run(recipe_path: str | None, overrides: list[str], out: str | None,
                resume: str | None) -> tuple[Recipe, Path]:
    """Resolve the recipe and the run folder for `gandeploy train`; nothing is written."""
    if resume is not None:
        run_dir = Path(resume)
        saved = run_dir / "recipe.yaml"
        if not saved.is_file():
            raise UserError(f"--resume {run_dir}: no recipe.yaml there, so it is not a run folder; pass runs/<name>")
        before = load_recipe(saved)
        recipe = load_recipe(recipe_path or saved, overrides)
        for key, old, new in recipe_differences(before.to_dict(), recipe.to_dict()):
            if key not in RESUMABLE_CHANGES:
                raise UserError(f"--resume {run_dir}: {key} is {old!r} in the run but {new!r} now; a resumed run may "
                                f"change only {', '.join(RESUMABLE_CHANGES)}; start a new run for anything else")
        return recipe, run_dir
    if recipe_path is None:
        raise UserError("no recipe given; run e.g. `gandeploy train recipes/dcgan_mnist.yaml`")
    recipe = load_recipe(recipe_path, overrides)
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 creates the folder
    if out is not None:
        run_dir = Path(out)
        if main and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise UserError(f"--out {run_dir} already exists and is not empty; pick a new folder or continue that "
                            f"run with --resume {run_dir}")
    else:
        run_dir = new_run_dir(Path("runs"), recipe.name) if main else Path("runs") / recipe.name
    return recipe, run_dir


def train(recipe: Recipe, run_dir: str | Path, device: str = "auto", resume: bool = False,
          progress: bool = True) -> dict:
    """Train `recipe` into `run_dir` (resuming from its last checkpoint if `resume`); returns the last log record."""
    run_dir = Path(run_dir)
    dev = torch_device(device)
    world = distributed.init(dev.type)
    if dev.type == "cuda" and world.size > 1:
        dev = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(dev)
    try:
        trainer = Trainer(recipe, run_dir, dev, world, progress)
        resumed = trainer.resume() if resume else None
        if resume and resumed is None and world.main:
            print(f"no checkpoint in {run_dir}/checkpoints yet: starting from step 0", file=sys.stderr)
        if world.main:
            ours = {"generator", "generator-latest", "recipe.yaml", "log.jsonl"}
            sweep(run_dir, names=ours)  # temporary files of killed runs of this folder
            for folder in ("checkpoints", "samples", "generator", "generator-latest"):
                sweep(run_dir / folder)
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
            what = f"resuming at step {trainer.step}" if resumed else "training"
            print(f"{what} {recipe.name}: {trainer.data.description}, {dev}, amp={trainer.amp}, "
                  f"{world.size} process(es) -> {run_dir}", file=sys.stderr)
        last = trainer.fit() if trainer.step < recipe.train.steps else {"step": trainer.step}
        if world.main and latest_checkpoint(run_dir) is None:
            trainer.checkpoint()
        elif world.main and generator_step(run_dir, latest_dir(run_dir, recipe.train).name) != trainer.step:
            # killed between the last checkpoint and generator/ (or during its update): write it from that state
            print(f"generator/ is behind the checkpoint of step {trainer.step}: writing it again", file=sys.stderr)
            model = trainer.export_generator()
            if trainer.best["step"] == trainer.step:  # the best was this very step: its generator/ too
                trainer.write_generator(model, run_dir / "generator", fid=trainer.best["fid"])
        elif world.main and trainer.best["step"] == trainer.step and generator_step(run_dir) != trainer.step:
            # killed after generator-latest/ but before (or while) the best generator/ was written
            print(f"generator/ is behind the best (step {trainer.step}): writing it again", file=sys.stderr)
            source = trainer.ema if trainer.ema is not None else trainer.G
            t = recipe.train
            model = standing_statistics(source, t.standing_stats_batches, t.batch_size, trainer.device, t.seed)
            trainer.write_generator(model, run_dir / "generator", fid=trainer.best["fid"])
        return last
    finally:
        distributed.shutdown(world)
