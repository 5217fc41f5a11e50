"""Training the autoencoder of a latent pipeline (``model.config._class_name``: AutoencoderKL or VQModel).

The miniatures of latent diffusion (configs/autoencoder_fmnist_{kl,vq}.yaml) need an autoencoder that
exists offline, so the project trains one, with the first-stage objective of latent diffusion (Rombach
et al. 2022, Sec. 3 and App. G) minus its perceptual and adversarial terms (no LPIPS weights offline):

    AutoencoderKL:  L = mean |x - D(z)| + kl_weight * KL(q(z|x) || N(0, I)) / (C H W),  z ~ q(z|x)
    VQModel:        L = mean |x - D(q(E(x)))| + codebook_weight * (codebook + 0.25 commitment term)

(LDM sums both terms over a sample; dividing both by the pixel count keeps its ``kl_weight`` = 1e-6
meaning the same thing). At export the latents of ``autoencoder.scale_images`` training images set
``scaling_factor = 1 / std`` (LDM's rescaling, so that the diffusion model sees unit-variance latents);
it is written into the exported ``config.json``, where diffusers' pipelines read it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from ..latent.components import AUTOENCODER_CLASSES, autoencoder_class, encode_images
from ..packing.files import write_checksums
from ..sampling import save_grid
from .config import AutoencoderConfig, OptimConfig
from .module import lr_factor, reads_due


def is_autoencoder_config(config: Optional[Mapping[str, Any]]) -> bool:
    """Whether ``model.config`` describes an autoencoder (a run that trains one) rather than a UNet."""
    return config is not None and dict(config).get("_class_name") in AUTOENCODER_CLASSES


def build_autoencoder(config: Mapping[str, Any]) -> nn.Module:
    cls = autoencoder_class(dict(config)["_class_name"])
    try:
        return cls(**{k: v for k, v in dict(config).items() if not k.startswith("_")})
    except TypeError as err:
        raise ValueError(f"model.config is not a valid {cls.__name__} config: {err}") from None


class AutoencoderTraining(L.LightningModule):
    """Reconstruction training of an AutoencoderKL (KL-regularised) or a VQModel (vector-quantised)."""

    def __init__(self, autoencoder: nn.Module, loss: AutoencoderConfig = AutoencoderConfig(),
                 optim: OptimConfig = OptimConfig(), seed: int = 0):
        super().__init__()
        self.autoencoder = autoencoder
        self.loss_cfg = loss
        self.optim_cfg = optim
        self.seed = seed
        self.vq = type(autoencoder).__name__ == "VQModel"

    def _generator(self, step: int) -> torch.Generator:
        # Posterior samples of step k are drawn from (seed, k, rank): a resumed run redraws them.
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + step * 1009 + self.global_rank * 17 + 3) % (2**63 - 1))
        return g

    def losses(self, x: torch.Tensor, step: int, sample: bool = True) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.vq:
            h = self.autoencoder.encode(x).latents
            decoded = self.autoencoder.decode(h)
            rec, extra = decoded.sample, decoded.commit_loss
            out["codebook"] = extra
            total_extra = self.loss_cfg.codebook_weight * extra
        else:
            posterior = self.autoencoder.encode(x).latent_dist
            z = posterior.sample(self._generator(step)) if sample else posterior.mode()
            rec = self.autoencoder.decode(z).sample
            kl = posterior.kl().mean() / x[0].numel()
            out["kl"] = kl
            total_extra = self.loss_cfg.kl_weight * kl
        out["l1"] = (rec.float() - x.float()).abs().mean()
        out["loss"] = out["l1"] + total_extra
        out["reconstruction"] = rec.detach()
        return out

    def training_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        losses = self.losses(x, self.global_step)
        for k, v in losses.items():
            if k != "reconstruction":
                self.log(f"train/{k}", v.detach(), on_step=True, on_epoch=False)
        if reads_due(self):
            self.bar_values = {f"train/{k}": float(losses[k].detach()) for k in ("loss", "l1")}
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        with torch.no_grad():
            losses = self.losses(x, 0, sample=False)
            mse = F.mse_loss(losses["reconstruction"].float().clamp(-1, 1), x.float())
            # PSNR of images in [-1, 1] (peak-to-peak 2).
            self.log("val/l1", losses["l1"], prog_bar=True, sync_dist=True)
            self.log("val/psnr", 10 * torch.log10(4.0 / mse.clamp_min(1e-12)), sync_dist=True)
        return losses["l1"]

    def configure_optimizers(self):
        cfg = self.optim_cfg
        if cfg.total_steps is None:
            import dataclasses

            cfg = dataclasses.replace(cfg, total_steps=self.trainer.max_steps)
        opt = torch.optim.AdamW(self.autoencoder.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


class ReconstructionGrid(L.Callback):
    """After each validation (rank 0): the first validation images (top rows) above their reconstructions."""

    def __init__(self, out_dir, num_images: int = 16):
        self.out_dir = Path(out_dir)
        self.num_images = num_images
        self.written: list[Path] = []
        self.images: Optional[torch.Tensor] = None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_images <= 0:
            return
        if self.images is None:
            val = trainer.datamodule.val_set
            items = [val[i] for i in range(min(self.num_images, len(val)))]
            self.images = torch.stack([x[0] if isinstance(x, tuple) else x for x in items])
        x = self.images.to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            rec = pl_module.losses(x, 0, sample=False)["reconstruction"]
        pl_module.train(was_training)
        both = torch.cat([x, rec.clamp(-1, 1)]).cpu()
        images = ((both + 1) * 127.5).round().to(torch.uint8)
        path = save_grid(images, self.out_dir / f"step_{trainer.global_step:07d}.png")
        self.written.append(path)


@torch.no_grad()
def latent_std(autoencoder: nn.Module, images: torch.Tensor, batch: int = 64) -> float:
    """The standard deviation of the unscaled latents of ``images`` (all elements together)."""
    latents = encode_images(autoencoder, images, batch=batch, scale=False)
    return float(latents.float().std())


def export_autoencoder(autoencoder: nn.Module, images: torch.Tensor, out_dir) -> dict[str, Any]:
    """Write the autoencoder as a diffusers model directory with ``scaling_factor = 1 / std`` of the
    latents of ``images``; returns the figures the report shows."""
    autoencoder = autoencoder.eval()
    std = latent_std(autoencoder, images)
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"the latents of the trained autoencoder have standard deviation {std}: cannot scale them")
    autoencoder.register_to_config(scaling_factor=1.0 / std)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    autoencoder.save_pretrained(out, safe_serialization=True)
    write_checksums(out, ["config.json", "diffusion_pytorch_model.safetensors"])
    return {"scaling_factor": 1.0 / std, "latent_std": std, "scale_images": int(images.shape[0])}


__all__ = ["AutoencoderTraining", "ReconstructionGrid", "build_autoencoder", "export_autoencoder",
           "is_autoencoder_config", "latent_std"]


# ---- the run (binarydm.train with an autoencoder config) ---------------------------------------------
def training_images(data, n: int) -> torch.Tensor:
    """The first ``n`` training images of the data module, as a float tensor in [-1, 1]."""
    ds = data.train_set
    items = [ds[i] for i in range(min(n, len(ds)))]
    return torch.stack([x[0] if isinstance(x, tuple) else x for x in items])


@torch.no_grad()
def reconstruction_fid(cfg, autoencoder: nn.Module, run_dir: Path) -> Optional[dict[str, Any]]:
    """rFID: ``eval.fid_samples`` held-out images reconstructed, against the reference (the bound on the FID of
    any latent model decoded by this autoencoder)."""
    from ..evaluation import evaluate, get_extractor
    from ..latent.components import decode_latents
    from ..sampling import save_images
    from .data import build_dataset
    from .final_eval import reference_of

    n = int(cfg.eval.fid_samples)
    ref = reference_of(cfg)
    if n <= 0 or ref is None:
        return None
    from omegaconf import OmegaConf

    held_out = build_dataset(OmegaConf.to_object(cfg.data), train=False, seed=cfg.seed)
    images = torch.stack([held_out[i][0] if isinstance(held_out[i], tuple) else held_out[i]
                          for i in range(min(n, len(held_out)))])
    rec = decode_latents(autoencoder, encode_images(autoencoder, images))
    folder = run_dir / "eval" / "reconstructions"
    save_images(((rec + 1) * 127.5).round().to(torch.uint8), folder, grid=16)
    reference, split, root = ref
    scores = evaluate(folder / "images", reference, get_extractor(cfg.eval.weights, kind=str(cfg.eval.features)),
                      split=split, num=images.shape[0], ref_num=images.shape[0], root=root,
                      size=int(cfg.data.image_size), backends=("cleanfid",), kid=False)
    return {"rfid": scores["fid_cleanfid"], "num": int(images.shape[0]), "reference": f"{reference} ({split})"}


def report_lines(result: Mapping[str, Any]) -> list[str]:
    lines = ["", "## Autoencoder", "",
             f"- scaling_factor = 1 / std of the latents of {result['scale_images']} training images: "
             f"{result['scaling_factor']:.6g} (std {result['latent_std']:.6g}), written into student/config.json"]
    if result.get("rfid") is not None:
        r = result["rfid"]
        lines.append(f"- reconstruction FID (rFID) of {r['num']} held-out images against {r['reference']}: "
                     f"{r['rfid']:.2f}")
    return lines
