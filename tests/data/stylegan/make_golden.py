#!/usr/bin/env python3
"""Make golden StyleGAN2/StyleGAN3 fixtures from NVIDIA's own code, on CPU.

This script is ours.  It contains no NVIDIA source: it *imports* NVIDIA's
modules from checkouts given on the command line and never copies them.

    python tests/data/stylegan/make_golden.py \
        --ada /path/to/stylegan2-ada-pytorch --sg3 /path/to/stylegan3 \
        --out tests/data/stylegan [--pickles /outside/the/repo]

For every config it writes into --out:
  <name>.safetensors  G.state_dict() (all parameters and buffers, float32,
                      NVIDIA's key names)
  <name>.json         class, init_args, init_kwargs, repo, commit, torch,
                      perturbation, sample/seed info
  <name>.npz          z, labels, c, ws_psi0.7 and images for a few
                      truncation / noise settings

With --pickles DIR it also writes genuine NVIDIA-style snapshot pickles
(DIR/<name>.pkl, as their training loop saves them).  Those embed NVIDIA's
source code and must never be put into this repository.

Both NVIDIA repos use the same top-level package names (dnnlib, torch_utils,
training), so each repo is handled in its own subprocess.
"""

import argparse
import copy
import json
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np

# Images dominate the size (float32 does not compress), so the batch is smaller
# at higher resolution: 8 samples at 32 px, 4 at 64 px, 1 at 256 px.
NUM_SAMPLES = {32: 8, 64: 4, 256: 1}
PERTURB_TEXT = (
    "torch.Generator seeded with perturb_seed, applied in named_parameters()/named_buffers() order: "
    "every parameter named 'bias' += 0.1*randn/bias_gain (bias_gain = the layer's lr_multiplier for "
    "FullyConnectedLayer, so the *effective* bias moves by 0.1*randn; this includes the affine biases "
    "that are initialised to 1 and the mapping biases with lr_multiplier 0.01); every 'noise_strength' "
    "= 0.1*randn (zero at init); 'mapping.w_avg' = 0.5*randn (zero at init); stylegan3 "
    "'magnitude_ema' buffers = uniform(0.5, 2.0) (one at init); stylegan3 'synthesis.input.transform' "
    "= inverse of [[cos a, sin a, tx], [-sin a, cos a, ty], [0, 0, 1]] with a = 7 degrees, "
    "tx = 0.1, ty = -0.05 (identity at init; the user transform that gen_images.py sets). "
    "Everything else (weights, noise_const, freqs, phases, filters) is NVIDIA's random init "
    "under torch.manual_seed(init_seed)."
)

# ---------------------------------------------------------------------------
# Configs.  Tiny channels, but the options that matter are as train.py sets them.

MAG_EMA_BETA = 0.5 ** (32 / (20 * 1e3))  # stylegan3 train.py with --batch=32

CONFIGS = [
    dict(
        name="ada_skip64", repo="ada", class_name="training.networks.Generator",
        note="stylegan2-ada-pytorch, like --cfg=stylegan2 (map=8), tiny channels",
        G_kwargs=dict(
            z_dim=32, w_dim=32, c_dim=0, img_resolution=64, img_channels=3,
            mapping_kwargs=dict(num_layers=8),
            synthesis_kwargs=dict(channel_base=1024, channel_max=32, num_fp16_res=2, conv_clamp=256,
                                  architecture="skip"),
        ),
        D_kwargs=dict(class_name="training.networks.Discriminator", c_dim=0, img_resolution=64, img_channels=3,
                      architecture="resnet", channel_base=1024, channel_max=32, num_fp16_res=2, conv_clamp=256,
                      block_kwargs={}, mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4)),
    ),
    dict(
        name="ada_resnet64_cond", repo="ada", class_name="training.networks.Generator",
        note="stylegan2-ada-pytorch, like --cfg=auto (map=2), resnet G, conditional c_dim=10",
        G_kwargs=dict(
            z_dim=32, w_dim=32, c_dim=10, img_resolution=64, img_channels=3,
            mapping_kwargs=dict(num_layers=2),
            synthesis_kwargs=dict(channel_base=1024, channel_max=32, num_fp16_res=2, conv_clamp=256,
                                  architecture="resnet"),
        ),
        D_kwargs=dict(class_name="training.networks.Discriminator", c_dim=10, img_resolution=64, img_channels=3,
                      architecture="resnet", channel_base=1024, channel_max=32, num_fp16_res=2, conv_clamp=256,
                      block_kwargs={}, mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4)),
    ),
    dict(
        name="ada_orig32", repo="ada", class_name="training.networks.Generator",
        note="stylegan2-ada-pytorch, 'orig' G (like --cfg=cifar: map=2, D orig), 32 px, 1 channel",
        G_kwargs=dict(
            z_dim=32, w_dim=32, c_dim=0, img_resolution=32, img_channels=1,
            mapping_kwargs=dict(num_layers=2),
            synthesis_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=2, conv_clamp=256,
                                  architecture="orig"),
        ),
        D_kwargs=dict(class_name="training.networks.Discriminator", c_dim=0, img_resolution=32, img_channels=1,
                      architecture="orig", channel_base=512, channel_max=32, num_fp16_res=2, conv_clamp=256,
                      block_kwargs={}, mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4)),
    ),
    dict(
        name="ada_skip256", repo="ada", class_name="training.networks.Generator",
        note="stylegan2-ada-pytorch, like --cfg=stylegan2 (map=8), 256 px, tiny channels",
        G_kwargs=dict(
            z_dim=32, w_dim=32, c_dim=0, img_resolution=256, img_channels=3,
            mapping_kwargs=dict(num_layers=8),
            synthesis_kwargs=dict(channel_base=2048, channel_max=32, num_fp16_res=2, conv_clamp=256,
                                  architecture="skip"),
        ),
        D_kwargs=dict(class_name="training.networks.Discriminator", c_dim=0, img_resolution=256, img_channels=3,
                      architecture="resnet", channel_base=2048, channel_max=32, num_fp16_res=2, conv_clamp=256,
                      block_kwargs={}, mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4)),
    ),
    dict(
        name="sg3_stylegan2_64", repo="sg3", class_name="training.networks_stylegan2.Generator",
        note="stylegan3 repo, --cfg=stylegan2 (map=8, fused_modconv_default='inference_only'), skip, 64 px",
        G_kwargs=dict(
            z_dim=32, w_dim=32, c_dim=0, img_resolution=64, img_channels=3,
            mapping_kwargs=dict(num_layers=8),
            channel_base=1024, channel_max=32, num_fp16_res=2, conv_clamp=256,
            architecture="skip", fused_modconv_default="inference_only",
        ),
        D_kwargs=dict(class_name="training.networks_stylegan2.Discriminator", c_dim=0, img_resolution=64,
                      img_channels=3, channel_base=1024, channel_max=32, num_fp16_res=2, conv_clamp=256,
                      block_kwargs=dict(freeze_layers=0), mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4)),
    ),
    dict(
        name="sg3_t64", repo="sg3", class_name="training.networks_stylegan3.Generator",
        note="stylegan3 repo, --cfg=stylegan3-t (map=2, conv_kernel 3, no radial filters), 64 px",
        G_kwargs=dict(
            z_dim=32, w_dim=32, c_dim=0, img_resolution=64, img_channels=3,
            mapping_kwargs=dict(num_layers=2),
            channel_base=1024, channel_max=32, num_fp16_res=2, conv_clamp=256,
            magnitude_ema_beta=MAG_EMA_BETA,
        ),
        D_kwargs=dict(class_name="training.networks_stylegan2.Discriminator", c_dim=0, img_resolution=64,
                      img_channels=3, channel_base=1024, channel_max=32, num_fp16_res=2, conv_clamp=256,
                      block_kwargs=dict(freeze_layers=0), mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4)),
    ),
    dict(
        name="sg3_r64_cond", repo="sg3", class_name="training.networks_stylegan3.Generator",
        note="stylegan3 repo, --cfg=stylegan3-r (map=2, conv_kernel 1, radial filters, channel_base/max doubled), 64 px, c_dim=5",
        G_kwargs=dict(
            z_dim=32, w_dim=32, c_dim=5, img_resolution=64, img_channels=3,
            mapping_kwargs=dict(num_layers=2),
            channel_base=2048, channel_max=64, num_fp16_res=2, conv_clamp=256,
            magnitude_ema_beta=MAG_EMA_BETA, conv_kernel=1, use_radial_filters=True,
        ),
        D_kwargs=dict(class_name="training.networks_stylegan2.Discriminator", c_dim=5, img_resolution=64,
                      img_channels=3, channel_base=1024, channel_max=32, num_fp16_res=2, conv_clamp=256,
                      block_kwargs=dict(freeze_layers=0), mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4)),
    ),
]

REPO_NAMES = {"ada": "NVlabs/stylegan2-ada-pytorch", "sg3": "NVlabs/stylegan3"}

# (key, truncation_psi, truncation_cutoff, noise_mode)
IMAGE_CASES = [
    ("psi1.0_const", 1.0, None, "const"),
    ("psi0.7_const", 0.7, None, "const"),
    ("psi0.7_none", 0.7, None, "none"),
    ("psi0.7_cutoff2_const", 0.7, 2, "const"),
]


def find_commit(path, explicit):
    if explicit:
        return explicit
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except Exception:
        pass
    # A COMMITS.txt ("owner/name <hash> ...") next to an exported tree.
    cand = os.path.join(os.path.dirname(os.path.abspath(path)), "COMMITS.txt")
    if os.path.exists(cand):
        base = os.path.basename(os.path.abspath(path))
        for line in open(cand):
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith("/" + base):
                return parts[1]
    return "unknown"


# ---------------------------------------------------------------------------
# Worker (runs inside a subprocess with one NVIDIA checkout on sys.path).

def _perturb(G, seed, is_sg3):
    import torch

    gen = torch.Generator().manual_seed(seed)
    modules = dict(G.named_modules())
    with torch.no_grad():
        for name, p in G.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            owner = modules[name.rsplit(".", 1)[0]] if "." in name else G
            if leaf == "bias":
                gain = float(getattr(owner, "bias_gain", 1.0))
                p.add_(0.1 * torch.randn(p.shape, generator=gen) / gain)
            elif leaf == "noise_strength":
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for name, b in G.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if name == "mapping.w_avg":
                b.copy_(0.5 * torch.randn(b.shape, generator=gen))
            elif leaf == "magnitude_ema":
                b.copy_(torch.rand(b.shape, generator=gen) * 1.5 + 0.5)
            elif is_sg3 and name == "synthesis.input.transform":
                a = np.deg2rad(7.0)
                m = np.array([[np.cos(a), np.sin(a), 0.1], [-np.sin(a), np.cos(a), -0.05], [0, 0, 1]])
                b.copy_(torch.from_numpy(np.linalg.inv(m)).to(b.dtype))


def _nv_class_name(obj):
    cls = type(obj)
    if hasattr(cls, "_orig_class_name"):  # persistence.persistent_class wrapper
        base = cls.__bases__[0]
        return f"{base.__module__}.{cls._orig_class_name}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    return x


def worker(args):
    sys.path.insert(0, os.path.abspath(args.repo_path))
    warnings.filterwarnings("ignore")
    import torch
    from safetensors.torch import save_file
    import dnnlib  # noqa: F401  (NVIDIA's)

    torch.set_num_threads(1)  # fixed reduction order on CPU
    torch.use_deterministic_algorithms(True)

    commit = args.commit
    for idx, cfg in enumerate(CONFIGS):
        if cfg["repo"] != args.worker or (args.only and cfg["name"] not in args.only):
            continue
        name = cfg["name"]
        init_seed = 1000 + idx
        perturb_seed = 2000 + idx
        z_seed = 3000 + idx
        n = NUM_SAMPLES[cfg["G_kwargs"]["img_resolution"]]

        torch.manual_seed(init_seed)
        G = dnnlib.util.construct_class_by_name(class_name=cfg["class_name"], **copy.deepcopy(cfg["G_kwargs"]))
        G = G.eval().requires_grad_(False)
        _perturb(G, perturb_seed, is_sg3=(cfg["class_name"] == "training.networks_stylegan3.Generator"))

        rng = np.random.default_rng(z_seed)
        z = rng.standard_normal((n, G.z_dim)).astype(np.float32)
        if G.c_dim > 0:
            labels = (np.arange(n) % G.c_dim).astype(np.int64)
            c = np.zeros((n, G.c_dim), np.float32)
            c[np.arange(n), labels] = 1
        else:
            labels = np.zeros((0,), np.int64)
            c = np.zeros((n, 0), np.float32)

        out = dict(z=z, labels=labels, c=c)
        zt, ct = torch.from_numpy(z), torch.from_numpy(c)
        with torch.no_grad():
            out["ws_psi0.7"] = G.mapping(zt, ct, truncation_psi=0.7, truncation_cutoff=None).numpy()
            for key, psi, cutoff, mode in IMAGE_CASES:
                img = G(zt, ct, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode=mode, force_fp32=True)
                out[key] = img.numpy().astype(np.float32)

        sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in G.state_dict().items()}
        save_file(sd, os.path.join(args.out, name + ".safetensors"))
        os.chmod(os.path.join(args.out, name + ".safetensors"), 0o644)
        np.savez_compressed(os.path.join(args.out, name + ".npz"), **out)
        meta = {
            "class": _nv_class_name(G),
            "init_args": _jsonable(list(G.init_args)),
            "init_kwargs": _jsonable(dict(G.init_kwargs)),
            "repo": REPO_NAMES[cfg["repo"]],
            "commit": commit,
            "torch": torch.__version__,
            "device": "cpu",
            "forward": "G(z, c, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode=mode, force_fp32=True), eval(), no_grad",
            "note": cfg["note"],
            "init_seed": init_seed,
            "perturb_seed": perturb_seed,
            "z_seed": z_seed,
            "z": f"np.random.default_rng({z_seed}).standard_normal(({n}, {G.z_dim})).astype(float32)",
            "num_samples": n,
            "num_ws": int(G.num_ws),
            "image_cases": {k: {"truncation_psi": p, "truncation_cutoff": co, "noise_mode": m} for k, p, co, m in IMAGE_CASES},
            "perturbation": PERTURB_TEXT,
        }
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=False)
            f.write("\n")
        print(f"{name}: {cfg['class_name']} num_ws={G.num_ws} params={sum(v.numel() for v in sd.values())} "
              f"img={out['psi1.0_const'].shape} std={out['psi0.7_const'].std():.4f}", flush=True)

        if args.pickles:
            _write_pickle(args, cfg, G, init_seed)


def _write_pickle(args, cfg, G, init_seed):
    """A snapshot pickle as NVIDIA's training loop writes it (OUTSIDE the repo)."""
    import torch
    import dnnlib

    out_dir = os.path.abspath(args.pickles)
    repo_root = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
    assert not (out_dir + os.sep).startswith(repo_root + os.sep), \
        "NVIDIA pickles embed their source: never write them inside the repo"
    torch.manual_seed(init_seed + 500)
    D = dnnlib.util.construct_class_by_name(**copy.deepcopy(cfg["D_kwargs"])).train().requires_grad_(False)
    G_ema = G
    Gk = cfg["G_kwargs"]
    training_set_kwargs = dict(
        class_name="training.dataset.ImageFolderDataset", path=f"datasets/{cfg['name']}.zip",
        use_labels=Gk["c_dim"] > 0, max_size=1000, xflip=False, resolution=Gk["img_resolution"], random_seed=0)
    snapshot_data = dict(training_set_kwargs=dict(training_set_kwargs))
    for key, module in [("G", G), ("D", D), ("G_ema", G_ema), ("augment_pipe", None)]:
        if module is not None:
            module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
        snapshot_data[key] = module
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, cfg["name"] + ".pkl"), "wb") as f:
        pickle.dump(snapshot_data, f)


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ada", help="checkout of NVlabs/stylegan2-ada-pytorch")
    ap.add_argument("--sg3", help="checkout of NVlabs/stylegan3")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ada-commit", default=None)
    ap.add_argument("--sg3-commit", default=None)
    ap.add_argument("--pickles", default=None, help="also write NVIDIA snapshot pickles here (outside the repo!)")
    ap.add_argument("--only", nargs="*", default=None, help="config names to make (default: all)")
    # internal
    ap.add_argument("--worker", choices=["ada", "sg3"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--repo-path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--commit", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        worker(args)
        return

    os.makedirs(args.out, exist_ok=True)
    for key, path, commit in [("ada", args.ada, args.ada_commit), ("sg3", args.sg3, args.sg3_commit)]:
        if path is None:
            print(f"skipping {key}: no checkout given", file=sys.stderr)
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", key, "--repo-path", path,
               "--commit", find_commit(path, commit), "--out", args.out]
        if args.pickles:
            cmd += ["--pickles", args.pickles]
        if args.only:
            cmd += ["--only", *args.only]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        subprocess.run(cmd, check=True, env=env)


if __name__ == "__main__":
    main()
